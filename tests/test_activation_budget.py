"""Selective activation checkpointing: same loss and gradients whichever layers recompute, the per-layer flags
survive TRL turning checkpointing off and on around generation, and `auto` keeps only what measured memory allows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from test_equivalence import G, IMAGES, _assert_same, _fixed_batch, _loss_and_grads, _trainer
from vqrl.training import activation_budget as AB

GB = 2**30


def test_keeping_activations_changes_neither_loss_nor_gradients(tiny_models, tmp_path):
    trainer = _trainer(tiny_models("qwen2_5_vl", layers=3), tmp_path, IMAGES, gradient_checkpointing="true",
                       checkpoint_layers="2")
    budget = trainer.activation_budget
    assert budget is not None and budget.kept == 2 and len(budget.layers) == 3
    trainer.model.gradient_checkpointing_enable({"use_reentrant": False})  # as train() and TRL's generation do
    assert all(layer.gradient_checkpointing for layer in budget.layers)
    assert budget.vision and all(block.gradient_checkpointing for block in budget.vision)
    inputs = _fixed_batch(trainer, 2)
    recomputed = []
    for layer in budget.layers + budget.vision:  # which blocks actually run through the checkpoint function
        layer._gradient_checkpointing_func = (lambda f, *a, _l=layer, _orig=layer._gradient_checkpointing_func:
                                              (recomputed.append(_l), _orig(f, *a))[1])
    selective = _loss_and_grads(trainer, inputs)
    assert [layer.gradient_checkpointing for layer in budget.layers] == [False, False, True]
    assert not any(block.gradient_checkpointing for block in budget.vision)  # the tower keeps its activations too
    assert recomputed and set(map(id, recomputed)) == {id(budget.layers[2])}
    assert trainer._max_loss_patches == sum(int(v["pixel_values"].shape[0]) for v in inputs["vision"][::G])
    budget.kept, budget.vision_kept = 0, False
    full = _loss_and_grads(trainer, inputs)
    assert all(layer.gradient_checkpointing for layer in budget.layers + budget.vision)
    assert set(map(id, recomputed)) == set(map(id, budget.layers + budget.vision))
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
    def __init__(self, n, vision_blocks=1, vision_trains=False):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer() for _ in range(n))
        self.visual = torch.nn.ModuleList(Layer() for _ in range(vision_blocks))
        if vision_trains:
            self.visual[0].weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(text_config=SimpleNamespace(hidden_size=1024, intermediate_size=4096,
                                                                  num_attention_heads=8, num_key_value_heads=2,
                                                                  head_dim=128),
                                      vision_config=SimpleNamespace(hidden_size=256, intermediate_size=1024))


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
    assert not model.visual[0].gradient_checkpointing  # a frozen tower (no trainable parameter) costs nothing to keep
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
    assert (f"{budget.kept} of 4 language layers now keep their activations, the vision tower too (measured peak "
            f"40.0 GB, usable {usable:.1f} GB, estimate {per_layer:.2f} GB per layer, 0.00 GB for the tower)"
            ) in caplog.text
    assert budget.log["activation_budget/measured_peak_gb"] == 40.0


def test_the_setting_is_read_whatever_its_case_or_spacing():
    assert [AB.parse_setting(v) for v in (" Auto ", "ALL", "0", "12", 3)] == ["auto", "all", 0, 12, 3]
    for bad in ("-1", "1.5", "", "none"):
        with pytest.raises(ValueError, match=f"checkpoint_layers must be auto, all or a number of layers, not {bad!r}"):
            AB.parse_setting(bad)


def test_the_per_layer_estimate_reads_a_flat_config_and_derives_the_head_size():
    """A config without text_config (a text-only model) or without head_dim (hidden_size / heads) still gives the
    estimate: 2 bytes x (12 h + 4 kv + 4 intermediate) + 8 h float32 bytes."""
    flat = SimpleNamespace(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=2,
                           head_dim=None)
    assert AB.bytes_per_token_per_layer(flat) == 2 * (12 * 512 + 4 * 2 * 64 + 4 * 2048) + 8 * 512
    assert AB.bytes_per_token_per_layer(flat, dtype_bytes=4) == 4 * (12 * 512 + 4 * 2 * 64 + 4 * 2048) + 8 * 512


def test_a_fixed_number_is_capped_at_the_layers_there_are():
    model = Model(3)
    budget = AB.ActivationBudget(model, 5, lambda: 1)
    assert budget.kept == 3 and not budget.auto
    budget.apply()
    assert [layer.gradient_checkpointing for layer in model.layers] == [False] * 3
    budget = AB.ActivationBudget(model, 1, lambda: 1)
    budget.apply()
    assert [layer.gradient_checkpointing for layer in model.layers] == [False, True, True]


def test_nothing_is_measured_without_a_gpu_or_with_a_fixed_number(gpu, monkeypatch):
    gpu.update(peak=1 * GB, free=100 * GB)
    fixed = AB.ActivationBudget(Model(4), 2, lambda: 10)
    for _ in range(3):
        fixed.on_step_end(None, None, None)
    assert fixed.kept == 2 and fixed.steps == 0 and fixed.log == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = AB.ActivationBudget(Model(4), "auto", lambda: 10)
    for _ in range(3):
        auto.on_step_end(None, None, None)
    assert auto.kept is None and auto.steps == 0


def _measured(gpu, layers, room_layers, tokens=10_000):
    """A budget decided at its second step with room for `room_layers` layers above a 40 GB peak."""
    model = Model(layers)
    budget = AB.ActivationBudget(model, "auto", lambda: tokens)
    per_layer = AB.ESTIMATE_MARGIN * budget.per_token * tokens
    gpu.update(peak=40 * GB, reserved=0)
    gpu["free"] = int((40 * GB + room_layers * per_layer) / AB.USABLE) + 1
    budget.on_step_end(None, None, None)
    budget.on_step_end(None, None, None)
    return model, budget, per_layer


def test_a_step_that_peaks_exactly_at_the_plan_keeps_the_layers(gpu, caplog):
    import logging

    model, budget, per_layer = _measured(gpu, 8, 3.5)
    assert budget.kept == 3 and budget.planned_peak == 40 * GB + 3 * per_layer
    gpu["peak"] = budget.planned_peak
    with caplog.at_level(logging.WARNING, logger=AB.logger.name):
        budget.on_step_end(None, None, None)
    assert budget.kept == 3 and caplog.text == ""
    assert budget.log["activation_budget/kept_layers"] == 3
    assert budget.log["activation_budget/checked_peak_gb"] == budget.planned_peak / GB
    gpu["peak"] = 141 * GB  # later steps are not checked again
    budget.on_step_end(None, None, None)
    assert budget.kept == 3


def test_a_step_over_the_plan_halves_the_kept_layers_and_says_so(gpu, caplog):
    import logging

    model, budget, per_layer = _measured(gpu, 8, 3.5)
    gpu["peak"] = budget.planned_peak + 1
    with caplog.at_level(logging.WARNING, logger=AB.logger.name):
        budget.on_step_end(None, None, None)
    assert budget.kept == 1 and [layer.gradient_checkpointing for layer in model.layers] == [False] + [True] * 7
    assert budget.log["activation_budget/kept_layers"] == 1
    peak_gb = (budget.planned_peak + 1) / GB
    assert f"step peak {peak_gb:.1f} GB over plan; 1 layers keep activations now" in caplog.text


def test_with_room_for_every_layer_only_a_step_near_the_limit_halves_them(gpu):
    """All 4 layers fit with room to spare: a step above the plan but below 97 % of the usable memory is fine; one
    above it halves the kept layers."""
    model, budget, per_layer = _measured(gpu, 4, 40)
    capacity = budget.log["activation_budget/capacity_gb"] * GB
    assert budget.kept == 4 and budget.log["activation_budget/layers"] == 4
    assert budget.planned_peak < capacity * 0.97 - 1
    gpu["peak"] = int(capacity * 0.97) - 1
    budget.on_step_end(None, None, None)
    assert budget.kept == 4
    model, budget, per_layer = _measured(gpu, 4, 40)
    gpu["peak"] = int(capacity * 0.97) + 1
    budget.on_step_end(None, None, None)
    assert budget.kept == 2


def test_no_tokens_yet_keeps_nothing_and_checks_nothing(gpu):
    model, budget, _ = _measured(gpu, 4, 10, tokens=0)
    assert budget.kept == 0 and budget.planned_peak == 40 * GB
    gpu["peak"] = 200 * GB
    budget.on_step_end(None, None, None)
    assert budget.kept == 0 and "activation_budget/checked_peak_gb" not in budget.log


def test_auto_keeps_the_vision_tower_first_when_it_fits(gpu):
    """The tower's estimate (patches x blocks x bytes per patch, with the margin) comes out of the room before the
    language layers; a tower that does not fit is recomputed and the language layers get the room."""
    model = Model(8, vision_blocks=4, vision_trains=True)
    tokens, patches = 10_000, 20_000
    budget = AB.ActivationBudget(model, "auto", lambda: tokens, lambda: patches)
    per_patch = AB.bytes_per_patch_per_block(model.config)
    assert per_patch == 2 * (16 * 256 + 4 * 1024) + 8 * 256
    per_layer = AB.ESTIMATE_MARGIN * budget.per_token * tokens
    tower = AB.ESTIMATE_MARGIN * per_patch * 4 * patches
    assert budget.vision_estimate() == tower
    gpu.update(peak=40 * GB, reserved=0)
    gpu["free"] = int((40 * GB + tower + 2.5 * per_layer) / AB.USABLE) + 1
    budget.on_step_end(None, None, None)
    budget.on_step_end(None, None, None)
    assert budget.vision_kept and budget.kept == 2
    assert not any(block.gradient_checkpointing for block in model.visual)
    assert budget.planned_peak == 40 * GB + tower + 2 * per_layer and budget.log["activation_budget/vision_kept"] == 1

    model = Model(8, vision_blocks=4, vision_trains=True)
    budget = AB.ActivationBudget(model, "auto", lambda: tokens, lambda: patches)
    gpu["free"] = int((40 * GB + 0.9 * tower) / AB.USABLE) + 1
    budget.on_step_end(None, None, None)
    budget.on_step_end(None, None, None)
    assert not budget.vision_kept and budget.kept == int(0.9 * tower // per_layer) == 1
    assert all(block.gradient_checkpointing for block in model.visual)


def test_a_step_over_plan_with_no_language_layer_kept_recomputes_the_tower_again(gpu):
    model = Model(8, vision_blocks=2, vision_trains=True)
    budget = AB.ActivationBudget(model, "auto", lambda: 10_000, lambda: 1_000)
    tower = budget.vision_estimate()
    gpu.update(peak=40 * GB, reserved=0)
    gpu["free"] = int((40 * GB + 1.2 * tower) / AB.USABLE) + 1  # the tower fits, no language layer does
    budget.on_step_end(None, None, None)
    budget.on_step_end(None, None, None)
    assert budget.vision_kept and budget.kept == 0
    gpu["peak"] = int(AB.USABLE * gpu["free"])  # the next step reached the usable limit
    budget.on_step_end(None, None, None)
    assert not budget.vision_kept and all(block.gradient_checkpointing for block in model.visual)
    assert budget.log["activation_budget/vision_kept"] == 0


def test_a_fixed_number_keeps_the_tower_and_the_estimate_reads_qwen2_vl_width():
    model = Model(3, vision_blocks=2, vision_trains=True)
    AB.ActivationBudget(model, 1, lambda: 1).apply()
    assert [b.gradient_checkpointing for b in model.visual] == [False, False]
    qwen2 = SimpleNamespace(vision_config=SimpleNamespace(embed_dim=1280, hidden_size=3584, mlp_ratio=4))
    assert AB.bytes_per_patch_per_block(qwen2) == 2 * (16 * 1280 + 4 * 5120) + 8 * 1280
    assert AB.bytes_per_patch_per_block(SimpleNamespace()) == 0


def test_a_trainable_tower_that_has_encoded_nothing_yet_is_recomputed(gpu):
    """No patches measured (text-only steps so far): the tower's cost is unknown, so it is not kept."""
    model = Model(4, vision_blocks=2, vision_trains=True)
    budget = AB.ActivationBudget(model, "auto", lambda: 10_000, lambda: 0)
    gpu.update(peak=40 * GB, reserved=0, free=100 * GB)
    budget.on_step_end(None, None, None)
    budget.on_step_end(None, None, None)
    assert budget.vision_estimate() is None and not budget.vision_kept and budget.kept == 4
    assert all(block.gradient_checkpointing for block in model.visual)
