"""The learning check's update probe (vqrl.learning.stability.UpdateProbe): each parameter group's optimizer update in
units of the learning rate, from the optimizer hooks of the transformers Trainer loop."""

from __future__ import annotations

import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from vqrl.learning.stability import UPDATE_FILE, UpdateProbe, param_group


@pytest.mark.parametrize("name, group", [
    ("model.visual.merger.mlp.2.weight", "merger"),
    ("model.visual.blocks.0.attn.qkv.weight", "vision_tower"),
    ("model.visual.patch_embed.proj.weight", "vision_tower"),
    ("model.language_model.embed_tokens.weight", "embeddings"),
    ("lm_head.weight", "lm_head"),
    ("model.language_model.layers.1.mlp.up_proj.weight", "lm_layers"),
    ("model.language_model.norm.weight", "other"),
])
def test_parameter_groups_follow_the_qwen_vl_names(name, group):
    assert param_group(name) == group


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lm_head = torch.nn.Linear(4, 3, bias=False)
        self.embed_tokens = torch.nn.Embedding(5, 4)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _step(model, optimizer, probe, state, args, scale):
    loss = scale * (model.lm_head(model.embed_tokens(torch.tensor([1, 2]))).sum())
    optimizer.zero_grad()
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe.on_pre_optimizer_step(args, state, None, model=model)
    optimizer.step()
    probe.on_optimizer_step(args, state, None, model=model, optimizer=optimizer)
    return {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}


def test_update_probe_measures_each_groups_step_in_units_of_the_learning_rate(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    lr = 1e-3
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    trainer = SimpleNamespace(_metrics={"train": defaultdict(list)})
    probe = UpdateProbe(trainer)
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    # a gradient a million times smaller moves Adam's parameters just as far: what the probe is there to show
    for scale in (1.0, 1e-6):
        deltas = _step(model, optimizer, probe, state, args, scale)
        state.global_step += 1
    rows = [json.loads(line) for line in (tmp_path / UPDATE_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["lr"] == lr
    assert set(rows[-1]["groups"]) == {"lm_head", "embeddings"}  # the frozen layer is not counted
    head = deltas["lm_head.weight"]
    assert rows[-1]["groups"]["lm_head"]["max_lr"] == pytest.approx(float(head.max()) / lr, rel=1e-5)
    assert rows[-1]["groups"]["lm_head"]["rms_lr"] == pytest.approx(float(head.square().mean().sqrt()) / lr, rel=1e-5)
    assert rows[-1]["groups"]["lm_head"]["max_at"] == "lm_head.weight"
    assert rows[0]["groups"]["lm_head"]["max_lr"] == pytest.approx(1.0, rel=1e-3)  # Adam's first step: lr per weight
    assert rows[1]["groups"]["lm_head"]["max_lr"] > 0.1  # the tiny gradient still moved it by a tenth of lr or more
    metrics = trainer._metrics["train"]
    assert len(metrics["probe/update_max_lr/lm_head"]) == 2 and len(metrics["probe/update_rms_lr/embeddings"]) == 2
    # embeddings: only the rows of the tokens seen moved
    assert float(deltas["embed_tokens.weight"][0].max()) == 0.0


def test_update_probe_skips_a_step_without_a_snapshot(tmp_path):
    trainer = SimpleNamespace(_metrics={"train": defaultdict(list)})
    probe = UpdateProbe(trainer)
    model = Tiny()
    optimizer = torch.optim.SGD(model.lm_head.parameters(), lr=0.1)
    probe.on_optimizer_step(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=0), None,
                            model=model, optimizer=optimizer)
    assert not (tmp_path / UPDATE_FILE).exists() and not trainer._metrics["train"]
