"""Extension points: a trainer declares what it needs (extra dataset columns, vLLM, its own configuration checks) and
can live in your own module (`--trainer package.module:Class`); a reward's options are its function's keyword
parameters, set by name with `--reward_kwargs`. Nothing in vqrl branches on a trainer's or an option's name."""

from __future__ import annotations

import ast
import os
import sys

import pytest
from trainer_utils import flags, write_records

from vqrl.config import parse
from vqrl.config_checks import ConfigError, check_config
from vqrl.rewards import build_reward_funcs, reward_options
from vqrl.rewards.registry import DEFAULT_OPTIONS
from vqrl.trainers import get_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = [{"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
          {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.4, "type": "scoring_image"}]

USER_TRAINER = '''
from vqrl.trainers.standard import StandardTrainer


class NoThinkAwareTrainer(StandardTrainer):
    """Asks for each prompt's no-think form too, and refuses a sampling temperature of 0."""

    extra_columns = ("prompt_nothink",)

    @classmethod
    def config_problems(cls, args):
        return [f"--temperature {args.temperature}: this trainer samples"] if args.temperature == 0 else []


class NotATrainer:
    pass
'''

USER_REWARDS = '''
from vqrl.rewards import completion_text


def short_answer(completions, max_words=50, **kwargs):
    """1 when the completion has at most max_words words."""
    return [1.0 if len(completion_text(c).split()) <= max_words else 0.0 for c in completions]
'''


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    (tmp_path / "my_trainers.py").write_text(USER_TRAINER)
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("my_trainers", "my_rewards"):
        sys.modules.pop(name, None)


# ---------------------------------------------------------------- trainers


def _compares_trainer_name(path: str) -> list[int]:
    """Lines where code compares `<x>.trainer` with a string (a branch on a trainer's name)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "trainer" for s in sides) and \
                    any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides):
                out.append(node.lineno)
    return out


@pytest.mark.parametrize("name", ["grpo.py", "config_checks.py", "config.py"])
def test_no_branch_on_a_trainers_name(name):
    assert _compares_trainer_name(os.path.join(ROOT, "src", "vqrl", name)) == []


def test_the_branch_checker_sees_one(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("def f(args):\n    return args.trainer == 'refine'\n")
    assert _compares_trainer_name(str(path)) == [2]


def test_trainers_declare_what_they_need():
    assert get_trainer("refine").extra_columns == ("prompt_nothink",)
    assert get_trainer("standard").extra_columns == () and not get_trainer("standard").uses_vllm
    assert get_trainer("vllm").uses_vllm


def test_a_trainer_of_your_own_is_a_flag(user_modules, tmp_path, tiny_model_dir):
    cls = get_trainer("my_trainers:NoThinkAwareTrainer")
    data = write_records(tmp_path / "d.json", IMAGES)
    args, model_args = parse(flags(tiny_model_dir, tmp_path / "o", [data], trainer="my_trainers:NoThinkAwareTrainer",
                                   temperature=0))
    with pytest.raises(ConfigError, match=r"--temperature 0.0: this trainer samples"):
        check_config(args, model_args)
    from vqrl.grpo import build_trainer

    args, model_args = parse(flags(tiny_model_dir, tmp_path / "o", [data], trainer="my_trainers:NoThinkAwareTrainer"))
    check_config(args, model_args)
    trainer = build_trainer(args, model_args)
    assert type(trainer) is cls
    row = trainer.train_dataset[0]
    assert "prompt_nothink" in row and "<think>" not in str(row["prompt_nothink"]) and "<think>" in str(row["prompt"])


@pytest.mark.parametrize("name, message", [
    ("my_trainers:NotATrainer", r"a trainer is a subclass of vqrl.trainers.base.VQRLTrainer"),
    ("my_trainers:Missing", r"my_trainers:Missing is missing"),
    ("no_such_module_xyz:T", r"cannot import module 'no_such_module_xyz'"),
    ("foo", r"unknown trainer; choose from standard, vllm, refine"),
])
def test_a_wrong_trainer_is_refused_in_one_line(user_modules, name, message):
    with pytest.raises(ValueError, match=message):
        get_trainer(name)


def test_an_unknown_extra_column_is_refused():
    from vqrl.data.dataset import RowBuilder

    with pytest.raises(ValueError, match=r"unknown extra dataset column 'prompt_sketch'; known: prompt_nothink"):
        RowBuilder([], None, None, extra_columns=("prompt_sketch",))


# ---------------------------------------------------------------- reward options


def test_reward_options_are_the_functions_keyword_parameters():
    from vqrl.rewards import ranking, scoring

    assert DEFAULT_OPTIONS == {"answer_threshold": 0.5, "answer_strict_less": False, "gauss_sigma": 0.5,
                               "fidelity_eps": ranking.DEFAULT_EPS}
    assert scoring.score_gauss_reward.__defaults__ == (0.5,)


def test_fidelity_eps_reaches_the_reward_from_the_command_line(tmp_path):
    """fidelity_eps had no flag: --reward_kwargs sets it, and it changes fidelity_rank's rewards."""
    args, _ = parse(flags("m", tmp_path, ["d.json"], reward_funcs=["fidelity_rank"],
                          reward_kwargs='{"fidelity_eps": 4.0}'))
    (wide,) = build_reward_funcs(args.reward_funcs, **reward_options(args))
    (default,) = build_reward_funcs(["fidelity_rank"])
    assert wide.options == {"fidelity_eps": 4.0}
    texts = [f"<answer>Score: {s}</answer>" for s in ("4.0", "4.2", "2.0", "2.2")]
    columns = {"solution": [4.5, 4.5, 1.4, 1.4], "num_generations": 2}
    assert wide(texts, **columns) != default(texts, **columns)
    assert wide(texts, **columns)[0] < default(texts, **columns)[0]  # a wider comparison: less sure, less reward


def test_a_recipe_sets_reward_options_as_a_mapping(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("reward_funcs: [answer]\nreward_kwargs:\n  answer_threshold: 0.35\n  answer_strict_less: true\n")
    args, _ = parse(["--config", str(recipe), "--use_cpu", "true"])
    (answer,) = build_reward_funcs(args.reward_funcs, **reward_options(args))
    assert answer.options == {"answer_threshold": 0.35, "answer_strict_less": True}


def test_a_user_reward_gets_its_own_options(user_modules):
    (func,) = build_reward_funcs(["my_rewards:short_answer"], max_words=2)
    assert func(["one two", "one two three"]) == [1.0, 0.0]
    (plain,) = build_reward_funcs(["my_rewards:short_answer"])
    assert plain(["one two three"]) == [1.0]


@pytest.mark.parametrize("options, message", [
    ({"max_wrds": 2}, r"unknown reward option 'max_wrds': no reward takes it"),
    ({"solution": 1}, r"reward option 'solution' is a name TRL or the data set gives every reward"),
    ({"fidelity_eps": 0}, r"fidelity_eps=0 must be a finite number > 0"),
])
def test_bad_reward_options_are_refused(user_modules, options, message):
    with pytest.raises(ValueError, match=message):
        build_reward_funcs(["answer", "my_rewards:short_answer"], **options)


def test_an_option_set_twice_is_refused(tmp_path):
    args, _ = parse(flags("m", tmp_path, ["d.json"], answer_threshold=0.5,
                          reward_kwargs='{"answer_threshold": 0.35}'))
    with pytest.raises(ValueError, match=r"reward option answer_threshold is set twice: --answer_threshold 0.5 and "
                                         r"reward_kwargs answer_threshold=0.35"):
        reward_options(args)


def test_reward_kwargs_must_be_a_json_object(tmp_path):
    with pytest.raises(ConfigError, match=r"--reward_kwargs fidelity_eps=1: not JSON"):
        parse(flags("m", tmp_path, ["d.json"], reward_kwargs="fidelity_eps=1"))


def test_the_entry_point_reports_a_bad_reward_option_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from vqrl import grpo

    monkeypatch.setattr(grpo, "build_trainer", lambda *a, **k: pytest.fail("got past the checks"))
    data = write_records(tmp_path / "d.json", IMAGES)
    code = grpo.main(flags("", tmp_path / "o", [data], reward_kwargs='{"answer_treshold": 0.3}'))
    assert code == 2
    assert "rewards: unknown reward option 'answer_treshold'" in capsys.readouterr().err

