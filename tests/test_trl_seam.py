"""The TRL seam: every private hook vqrl touches is listed with the signature it was written against, checked at
start-up (a changed one stops the run, naming the hook and the release), called by keyword, and documented."""

from __future__ import annotations

import ast
import os
from types import SimpleNamespace

import pytest
import trl
import trl.trainer.grpo_trainer as trl_grpo
from trl import GRPOTrainer

from vqrl.trainers import trl_seam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_FILES = [os.path.join(ROOT, "src", "vqrl", "trainers", f) for f in ("base.py", "refine.py", "vllm.py")]


def test_the_installed_trl_matches_every_hook():
    assert trl_seam.library_problems() == []


def test_a_changed_hook_signature_is_named_with_the_release(monkeypatch):
    def renamed(self, prompt_ids, images, multimodal_fields, num_generations, tools=None):
        raise AssertionError("never called")

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", renamed)
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    (problem,) = trl_seam.library_problems()
    assert problem.startswith("trl 1.17.0 (vqrl was written against trl 1.16.0): GRPOTrainer._generate_single_turn "
                              "changed: it is now (self, prompt_ids, images, multimodal_fields, num_generations, "
                              "tools=None), vqrl was written against (self, prompt_ids, images, multimodal_fields, "
                              "num_generations, has_tool_images=False)")
    assert problem.endswith("pin that release or update vqrl (docs/trl_hooks.md)")
    monkeypatch.setattr(trl_seam, "_checked", False)
    with pytest.raises(trl_seam.SeamError, match=r"GRPOTrainer\._generate_single_turn changed"):
        trl_seam.check_library()


def test_a_changed_library_function_and_a_lost_global_are_named(monkeypatch):
    """shuffle_sequence_dict gone: vision-once's grouping is not silently dropped (it used to be: hasattr fallback)."""
    monkeypatch.delattr(trl_grpo, "shuffle_sequence_dict")
    monkeypatch.setattr(trl_seam, "FUNCTIONS", trl_seam.FUNCTIONS + (
        trl_seam.Function("transformers.trainer_utils", "rotate_checkpoints", "(output_dir)", "test"),))
    problems = trl_seam.library_problems()
    assert any("trl.trainer.grpo_trainer.shuffle_sequence_dict no longer exists" in p for p in problems)
    assert any(p.startswith("transformers ") and "rotate_checkpoints changed" in p for p in problems)


def test_prepare_inputs_that_stops_calling_the_global_is_refused(monkeypatch):
    original = GRPOTrainer._prepare_inputs

    def prepare(self, generation_batch):  # same signature, no module-global shuffle to swap
        return original(self, generation_batch=generation_batch)

    monkeypatch.setattr(GRPOTrainer, "_prepare_inputs", prepare)
    (problem,) = trl_seam.library_problems()
    assert "no longer calls the module global shuffle_sequence_dict" in problem


def test_start_up_refuses_a_changed_hook_before_any_model_loads(monkeypatch, tmp_path, capsys):
    from vqrl import grpo

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", lambda self, model, inputs, extra=None: None)
    monkeypatch.setattr(trl_seam, "_checked", False)
    monkeypatch.setattr(grpo, "load_model_and_processor", lambda *a: pytest.fail("the model was loaded"))
    code = grpo.main(["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--max_steps", "1",
                      "--use_cpu", "true"])
    err = capsys.readouterr().err
    assert code == 2
    assert "GRPOTrainer._compute_loss changed: it is now (self, model, inputs, extra=None)" in err


def test_the_seam_tables_cannot_be_changed_by_accident():
    import dataclasses

    for entry in (*trl_seam.HOOKS, *trl_seam.FUNCTIONS):
        with pytest.raises(dataclasses.FrozenInstanceError):
            entry.library = "somewhere else"


def test_missing_attribute_is_an_error_not_a_default():
    names = trl_seam.ATTRIBUTES + trl_seam.HF_GENERATION_ATTRIBUTES
    trainer = SimpleNamespace(**{name: 0 for name in names if name != "_entropy_bonus_enabled"})
    trainer.use_vllm = False
    with pytest.raises(trl_seam.SeamError, match=r"GRPOTrainer\._entropy_bonus_enabled is not set after "
                                                 r"GRPOTrainer.__init__"):
        trl_seam.check_trainer(trainer)


def test_a_trainer_checks_trls_attributes_once_built(monkeypatch, tiny_model_dir, tmp_path):
    from trainer_utils import make_trainer, write_records

    data = write_records(tmp_path / "d.json", [{"image": "images/chelsea.jpg", "solution": 4.0,
                                                 "type": "scoring_image"}])
    monkeypatch.setattr(trl_seam, "ATTRIBUTES", trl_seam.ATTRIBUTES + ("_a_later_trl_dropped",))
    with pytest.raises(trl_seam.SeamError, match=r"GRPOTrainer\._a_later_trl_dropped is not set after "
                                                 r"GRPOTrainer.__init__"):
        make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["format"])


def test_hf_generation_settings_are_required_only_without_vllm():
    """TRL sets generation_kwargs / generation_config only for HF generation: a vLLM trainer has none."""
    trainer = SimpleNamespace(**{name: 0 for name in trl_seam.ATTRIBUTES})
    trainer.use_vllm, trainer.vllm_mode = True, "colocate"
    trainer.vllm_generation = SimpleNamespace(generation_kwargs={}, llm=object())
    trl_seam.check_trainer(trainer)
    trainer.use_vllm = False
    with pytest.raises(trl_seam.SeamError, match=r"GRPOTrainer\.generation_kwargs is not set"):
        trl_seam.check_trainer(trainer)


def test_a_colocated_vllm_engine_is_required_of_trls_vllm_generation():
    trainer = SimpleNamespace(**{name: 0 for name in trl_seam.ATTRIBUTES})
    trainer.use_vllm, trainer.vllm_mode = True, "colocate"
    trainer.vllm_generation = SimpleNamespace(generation_kwargs={})  # no llm
    with pytest.raises(trl_seam.SeamError, match=r"GRPOTrainer\.vllm_generation\.llm is not set"):
        trl_seam.check_trainer(trainer)
    trainer.vllm_mode = "server"  # server mode has no engine in the process
    trl_seam.check_trainer(trainer)


def test_every_private_override_is_listed():
    """A trainer that overrides another private TRL/transformers method must add it to trl_seam.HOOKS."""
    from vqrl.trainers import get_trainer

    listed = {h.name for h in trl_seam.HOOKS}
    for name in ("standard", "vllm", "refine"):
        cls = get_trainer(name)
        for klass in cls.__mro__[:cls.__mro__.index(GRPOTrainer)]:
            own = [n for n in vars(klass) if n.startswith("_") and not n.startswith("__") and hasattr(GRPOTrainer, n)]
            assert set(own) <= listed, f"{klass.__name__} overrides {sorted(set(own) - listed)}: add to trl_seam.HOOKS"


def _positional_base_calls(path: str) -> list[str]:
    """Calls of a listed hook on super() or GRPOTrainer (or a name bound to one) with positional arguments."""
    hooks = {h.name for h in trl_seam.HOOKS}
    with open(path) as f:
        tree = ast.parse(f.read())
    bound = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute)
             and node.value.attr in hooks for t in node.targets if isinstance(t, ast.Name)}
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in hooks and isinstance(func.value, ast.Call) \
                and getattr(func.value.func, "id", None) == "super" and node.args:
            out.append(f"{os.path.basename(path)}:{node.lineno} super().{func.attr}")
        elif isinstance(func, ast.Name) and func.id in bound and len(node.args) > 1:  # (self, ...) allowed
            out.append(f"{os.path.basename(path)}:{node.lineno} {func.id}(...)")
    return out


def test_base_methods_are_called_by_keyword():
    assert [c for path in TRAINER_FILES for c in _positional_base_calls(path)] == []


def test_the_keyword_checker_sees_a_positional_call(tmp_path):
    path = tmp_path / "t.py"
    path.write_text("class T:\n    def _compute_loss(self, model, inputs):\n"
                    "        return super()._compute_loss(model, inputs=inputs)\n")
    assert _positional_base_calls(str(path)) == ["t.py:3 super()._compute_loss"]


def test_docs_list_the_same_hooks():
    with open(os.path.join(ROOT, "docs", "trl_hooks.md")) as f:
        page = f.read()
    start = page.index("<!-- trl_seam.markdown_table() -->\n") + len("<!-- trl_seam.markdown_table() -->\n")
    assert page[start:page.index("<!-- end -->")].strip() == trl_seam.markdown_table()
    for name in trl_seam.ATTRIBUTES + trl_seam.HF_GENERATION_ATTRIBUTES + ("current_gradient_accumulation_steps",):
        assert f"`{name}`" in page, name


def test_a_hook_that_is_gone_is_named_and_the_other_hooks_are_still_checked(monkeypatch):
    first, second = trl_seam.HOOKS[0], trl_seam.HOOKS[1]
    monkeypatch.delattr(GRPOTrainer, first.name)

    def changed(self, renamed_argument):
        raise AssertionError("never called")

    monkeypatch.setattr(GRPOTrainer, second.name, changed)
    problems = trl_seam.library_problems()
    assert len(problems) == 2
    assert f"GRPOTrainer.{first.name} no longer exists; vqrl uses it to {first.use}" in problems[0]
    assert f"GRPOTrainer.{second.name} changed" in problems[1]
