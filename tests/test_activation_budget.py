"""Selective activation checkpointing: same loss and gradients whichever layers recompute, the per-layer flags
survive TRL turning checkpointing off and on around generation, and `auto` keeps only what measured memory allows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from test_equivalence import IMAGES, _assert_same, _fixed_batch, _loss_and_grads, _trainer
from vqrl.training import activation_budget as AB

GB = 2**30


def test_keeping_activations_changes_neither_loss_nor_gradients(tiny_models, tmp_path):
    trainer = _trainer(tiny_models("qwen2_5_vl", layers=3), tmp_path, IMAGES, gradient_checkpointing="true",
                       checkpoint_layers="2")
    budget = trainer.activation_budget
    assert budget is not None and budget.kept == 2 and len(budget.layers) == 3
    trainer.model.gradient_checkpointing_enable({"use_reentrant": False})  # as train() and TRL's generation do
    assert all(layer.gradient_checkpointing for layer in budget.layers)
    inputs = _fixed_batch(trainer, 2)
    recomputed = []
    for layer in budget.layers:  # which layers actually run through the checkpoint function
        layer._gradient_checkpointing_func = (lambda f, *a, _l=layer, _orig=layer._gradient_checkpointing_func:
                                              (recomputed.append(_l), _orig(f, *a))[1])
    selective = _loss_and_grads(trainer, inputs)
    assert [layer.gradient_checkpointing for layer in budget.layers] == [False, False, True]
    assert recomputed and set(map(id, recomputed)) == {id(budget.layers[2])}
    budget.kept = 0
    full = _loss_and_grads(trainer, inputs)
    assert all(layer.gradient_checkpointing for layer in budget.layers)
    _assert_same(selective, full)


def test_all_and_no_checkpointing_install_no_budget(tiny_models, tmp_path):
    assert _trainer(tiny_models("qwen2_5_vl"), tmp_path / "a", IMAGES, gradient_checkpointing="true",
                    checkpoint_layers="all").activation_budget is None
    assert _trainer(tiny_models("qwen2_5_vl"), tmp_path / "b", IMAGES,
                    gradient_checkpointing="false", checkpoint_layers="1").activation_budget is None
    assert _trainer(tiny_models("qwen2_5_vl"), tmp_path / "c", IMAGES).activation_budget is None  # auto: CUDA only
    with pytest.raises(ValueError, match="checkpoint_layers must be auto, all or a number"):
        AB.parse_setting("half")


class Layer(GradientCheckpointingLayer):
    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = True


class Model(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer() for _ in range(n))
        self.visual = torch.nn.ModuleList([Layer()])  # vision blocks are never touched
        self.config = SimpleNamespace(text_config=SimpleNamespace(hidden_size=1024, intermediate_size=4096,
                                                                  num_attention_heads=8, num_key_value_heads=2,
                                                                  head_dim=128))


@pytest.fixture
def gpu(monkeypatch):
    """A fake GPU whose peak memory and free memory the test sets."""
    state = {"peak": 0, "free": 0, "reserved": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: state["peak"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (state["free"], 141 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: state["reserved"])
    return state


def test_auto_keeps_what_measured_memory_allows_then_halves_when_over_plan(gpu):
    model = Model(8)
    per_token = AB.bytes_per_token_per_layer(model.config)
    assert per_token == 2 * (12 * 1024 + 4 * 256 + 4 * 4096) + 8 * 1024
    tokens = 10_000
    budget = AB.ActivationBudget(model, "auto", lambda: tokens)
    assert budget.layers == list(model.layers) and budget.kept is None
    budget.apply()  # nothing measured yet: HF's all-checkpointed state stays
    assert all(layer.gradient_checkpointing for layer in model.layers)
    per_layer = AB.ESTIMATE_MARGIN * per_token * tokens
    gpu.update(peak=40 * GB, reserved=50 * GB)
    gpu["free"] = int((40 * GB + 3.5 * per_layer) / AB.USABLE) - 50 * GB  # room for 3.5 layers
    args, state = SimpleNamespace(), SimpleNamespace()
    budget.on_step_end(args, state, None)  # step 1: no optimizer state yet, nothing decided
    assert budget.kept is None
    budget.on_step_end(args, state, None)
    assert budget.kept == 3
    assert [layer.gradient_checkpointing for layer in model.layers] == [False] * 3 + [True] * 5
    assert model.visual[0].gradient_checkpointing
    gpu["peak"] = int(AB.USABLE * (gpu["free"] + gpu["reserved"]))  # the next step reached the usable limit
    budget.on_step_end(args, state, None)
    assert budget.kept == 1 and [layer.gradient_checkpointing for layer in model.layers] == [False] + [True] * 7


def test_auto_keeps_nothing_without_room(gpu):
    model = Model(4)
    budget = AB.ActivationBudget(model, "auto", lambda: 10_000)
    gpu.update(peak=130 * GB, free=5 * GB, reserved=135 * GB)
    budget.on_step_end(None, None, None)
    budget.on_step_end(None, None, None)
    assert budget.kept == 0 and all(layer.gradient_checkpointing for layer in model.layers)


def test_a_single_process_agrees_with_itself():
    """Without a process group there is no one to agree with: the choice stands (and no collective is called)."""
    assert not torch.distributed.is_initialized()
    assert AB.agree(5) == 5 and AB.agree(0) == 0


def test_agreeing_in_a_process_group_runs_on_the_backends_device(tmp_path):
    """In a process group the value goes through all_reduce on the device its backend uses: the CPU for gloo (here,
    one process), the current GPU for NCCL. (The MIN over several ranks is not tested on this machine.)"""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert AB.agree(3) == 3
    finally:
        torch.distributed.destroy_process_group()


def test_the_decision_is_logged_in_gigabytes(gpu, caplog):
    """The INFO line an operator reads to size a run states the measured peak, the usable memory and the estimate
    per layer in GB (2**30 bytes), next to the layers kept."""
    import logging

    model = Model(4)
    tokens = 10_000
    budget = AB.ActivationBudget(model, "auto", lambda: tokens)
    gpu.update(peak=40 * GB, reserved=50 * GB, free=30 * GB)
    with caplog.at_level(logging.INFO, logger=AB.logger.name):
        budget.on_step_end(None, None, None)
        budget.on_step_end(None, None, None)
    per_layer = AB.ESTIMATE_MARGIN * AB.bytes_per_token_per_layer(model.config) * tokens / GB
    usable = budget.log["activation_budget/capacity_gb"]
    assert usable == pytest.approx(AB.USABLE * 80)
    assert (f"{budget.kept} of 4 language layers now keep their activations (measured peak 40.0 GB, usable "
            f"{usable:.1f} GB, estimate {per_layer:.2f} GB per layer)") in caplog.text
    assert budget.log["activation_budget/measured_peak_gb"] == 40.0
