"""Shipped recipes: each parses into known options and holds the values of the code it reproduces (read from that
code); each trains 2 steps on the tiny model (slow), with its reward options bound to its rewards."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from trainer_utils import EXAMPLES
from vqrl.grpo import build_trainer, parse
from vqrl.rewards import REWARDS, RewardFunc, build_reward_funcs, reward_options

ROOT = os.path.dirname(EXAMPLES)
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "*.yaml")))
RECIPE = {os.path.basename(r)[:-len(".yaml")]: r for r in RECIPES}
CPU = ["--use_cpu", "true", "--report_to", "none", "--save_strategy", "no"]


def recipe_args(name: str):
    args, _ = parse(["--config", RECIPE[name], *CPU])
    return args


def test_every_recipe_names_known_options_rewards_trainer_and_data():
    from vqrl.config import VQRLConfig
    from vqrl.trainers import TRAINERS

    known = set(VQRLConfig.__dataclass_fields__)
    assert {"refine_seed", "refine_stage1", "refine_stage2", "q_insight", "visualquality_r1"} <= set(RECIPE)
    for name, recipe in RECIPE.items():
        cfg = yaml.safe_load(open(recipe))
        assert set(cfg) - {"model_name_or_path"} <= known, (name, set(cfg) - known)
        assert cfg["trainer"] in TRAINERS, name
        assert set(cfg["reward_funcs"]) <= set(REWARDS), name
        assert set(cfg.get("pd_gate", [])) <= set(REWARDS), name
        for f in cfg["data_files"]:
            assert os.path.exists(os.path.join(ROOT, f)), f
        args = recipe_args(name)
        for key, value in cfg.items():  # a scalar for one of vqrl's list options is read as a one-item list
            got = getattr(args, key)
            assert got == (value if isinstance(value, list) or not isinstance(got, list) else [value]), (name, key)


# Read from jzhws/VisualQualityAssessment-RL-Trainer: grpo.py (reward_funcs default), grpo_trainer_refine-iqa.py
# (temperature=1 in its own GenerationConfig, pd * (rewards // 2), shaping, loss), finetune_RL.sh (G 8, one prompt per
# device, 1024 tokens, 5 epochs), grpo_config.py (beta 0.04, learning rate 1e-7).
SEED_STAGE2 = {
    "trainer": "refine", "reward_funcs": ["answer_strict", "format_strict"], "reward_weights": None,
    "pd_mode": "seed", "pd_weights": None, "pd_gate": ["format_strict", "answer_strict"],
    "pd_advantage_shaping": True, "num_generations": 8, "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1, "num_iterations": 1, "loss_type": "grpo", "beta": 0.04,
    "learning_rate": 1e-7, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_completion_length": 1024,
    "num_train_epochs": 5, "think": True,
}


def test_refine_seed_is_the_seeds_stage2():
    args = recipe_args("refine_seed")
    assert {key: getattr(args, key) for key in SEED_STAGE2} == SEED_STAGE2


def test_q_insight_scores_strictly_within_035():
    args = recipe_args("q_insight")
    answer = build_reward_funcs(["answer"], **reward_options(args))[0]
    assert answer.options == {"answer_threshold": 0.35, "answer_strict_less": True}
    assert answer(["<think>t</think><answer>Score: 4.05</answer>"], solution=[3.70]) == [0.0]  # 0.35 off: not < 0.35
    assert "distortion" in args.reward_funcs and (args.num_generations, args.beta) == (8, 0.001)


def test_visualquality_r1_ranks_several_images_per_device():
    """VisualQuality-R1 trains 48 completions of 6 generations (8 images) per device and step; one image per device
    would make fidelity_rank 0 on a single GPU."""
    args = recipe_args("visualquality_r1")
    per_generation = args.per_device_train_batch_size * args.steps_per_generation
    assert args.per_device_train_batch_size // args.num_generations >= 2
    assert (args.num_generations, per_generation // args.num_generations) == (6, 8)
    assert args.steps_per_generation == args.gradient_accumulation_steps  # one optimizer step per generation


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.basename(r) for r in RECIPES])
def test_recipe_runs_two_steps(recipe, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name data relative to the repository, as finetune_RL.sh runs them
    args, model_args = parse(["--config", recipe, "--model_name_or_path", tiny_model_dir, "--output_dir",
                              str(tmp_path), "--max_steps", "2", "--max_completion_length", "16", *CPU])
    trainer = build_trainer(args, model_args)
    trainer.train()
    assert trainer.state.global_step == 2
    assert any("reward" in row for row in trainer.state.log_history)
    for func in [f for f in trainer.reward_funcs if isinstance(f, RewardFunc) and f.options]:
        wanted = {key: value for key, value in reward_options(args).items() if key in func.options}
        bound = {key: func.options[key] for key in wanted}
        assert bound == wanted, func
