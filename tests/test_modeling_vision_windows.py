"""The vision tower's attention in one SDPA call per window length (modeling/vision_windows.py) gives the same tower
output and the same gradients as transformers' per-window SDPA calls, for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, on
random mixes of image sizes and videos; it reads the window boundaries to the host once per forward, makes fewer
attention calls, refuses what it was not written for, and leaves no trace in a saved checkpoint."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vqrl.modeling import vision_once, vision_windows

ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def tiny_towers(tmp_path_factory):
    from vqrl.models.tiny import make_tiny_model

    paths = {}
    for arch in ARCHS:  # 4 blocks: Qwen2.5-VL's tiny tower alternates window and whole-image blocks
        paths[arch] = make_tiny_model(arch, tmp_path_factory.mktemp(arch), vision_depth=4)
    return paths


def _tower(path):
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa")
    return model, vision_once.base_model(model).visual


def _grids(rng: random.Random) -> torch.Tensor:
    """1-4 media: images of random even sides (some not a multiple of the window), videos of 2 frames."""
    rows = []
    for _ in range(rng.randint(1, 4)):
        t = rng.choice([1, 1, 2])
        rows.append([t, 2 * rng.randint(1, 10), 2 * rng.randint(1, 10)])
    return torch.tensor(rows)


def _run(visual, grids, x):
    out = visual(x, grid_thw=grids)
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    return out, torch.autograd.grad(out.float().pow(2).sum(), x)[0]


def _patch_dim(visual):
    c = visual.config
    return c.in_channels * c.temporal_patch_size * c.patch_size ** 2


@pytest.mark.parametrize("arch", ARCHS)
def test_same_tower_output_and_gradients_as_per_window_calls(tiny_towers, arch, monkeypatch):
    rng = random.Random(arch)
    model, visual = _tower(tiny_towers[arch])
    other, windowed = _tower(tiny_towers[arch])
    assert vision_windows.install(other)
    calls = {"windows": 0}
    original = vision_windows.windows_attention

    def counting(*args, **kwargs):
        calls["windows"] += 1
        return original(*args, **kwargs)

    from transformers import AttentionInterface
    AttentionInterface.register(vision_windows.NAME, counting)  # what the vision blocks look up at each call
    for case in range(12):
        grids = _grids(rng)
        x = torch.randn(int(grids.prod(-1).sum()), _patch_dim(visual), requires_grad=True)
        ref_out, ref_grad = _run(visual, grids, x)
        before = calls["windows"]
        out, grad = _run(windowed, grids, x)
        assert calls["windows"] - before == len(visual.blocks), "every block goes through the batched attention"
        assert torch.equal(out, ref_out), (case, grids.tolist())
        assert torch.equal(grad, ref_grad), (case, grids.tolist())
    AttentionInterface.register(vision_windows.NAME, original)


def test_fewer_attention_calls_and_one_host_read_per_boundaries(tiny_towers, monkeypatch):
    """Qwen2.5-VL, two 448-like images: transformers' path makes one SDPA call per window; ours one per length."""
    model, visual = _tower(tiny_towers["qwen2_5_vl"])
    grids = torch.tensor([[1, 16, 16], [1, 16, 16]])  # 16 windows of 4 x 4 merged tokens each (window 56 px)
    x = torch.randn(int(grids.prod(-1).sum()), _patch_dim(visual))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    counts = {"sdpa": 0, "plans": 0}

    def counting_sdpa(*args, **kwargs):
        counts["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        visual(x, grid_thw=grids)
        per_window = counts["sdpa"]
        assert vision_windows.install(model)
        plan = vision_windows._Plan
        monkeypatch.setattr(vision_windows, "_Plan", lambda cu: (counts.__setitem__("plans", counts["plans"] + 1),
                                                                 plan(cu))[1])
        monkeypatch.setitem(vision_windows._checked, "done", True)  # the first-call check adds per-window calls
        counts["sdpa"] = 0
        visual(x, grid_thw=grids)
    blocks = len(visual.blocks)
    assert per_window == (blocks // 2) * 32 + (blocks // 2) * 2  # window blocks: 2 x 16 windows; whole-image: 2
    assert counts["sdpa"] == blocks  # one length per block
    assert counts["plans"] == 2  # the window boundaries and the image boundaries, each read once


def test_first_call_is_checked_against_per_window_calls(tiny_towers, monkeypatch):
    model, visual = _tower(tiny_towers["qwen2_vl"])
    assert vision_windows.install(model)
    monkeypatch.setitem(vision_windows._checked, "done", False)
    real = vision_windows._windowed
    monkeypatch.setattr(vision_windows, "_windowed", lambda *a: real(*a) * 1.01)
    grids = torch.tensor([[1, 4, 4]])
    with pytest.raises(RuntimeError, match=r"differs from per-window SDPA .*transformers \d"):
        visual(torch.randn(16, _patch_dim(visual)), grid_thw=grids)


def test_refuses_calls_it_was_not_written_for():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(RuntimeError, match="non-causal, packed windows, no mask"):
        vision_windows.windows_attention(torch.nn.Identity(), q, q, q)  # no boundaries
    cu = torch.tensor([0, 4, 8], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="non-causal"):
        vision_windows.windows_attention(torch.nn.Identity(), q, q, q, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                         is_causal=True)
    with pytest.raises(RuntimeError, match="cover 6 tokens, the sequence has 8"):
        short = torch.tensor([0, 2, 6], dtype=torch.int32)
        vision_windows.windows_attention(torch.nn.Identity(), q, q, q, cu_seq_lens_q=short, cu_seq_lens_k=short)


def test_only_sdpa_towers_and_no_trace_in_checkpoints(tiny_towers, tmp_path):
    eager = AutoModelForImageTextToText.from_pretrained(tiny_towers["qwen2_vl"], attn_implementation="eager")
    assert not vision_windows.install(eager)  # the user asked for eager: left alone
    model, _ = _tower(tiny_towers["qwen2_5_vl"])
    assert vision_windows.install(model)
    assert vision_windows.install(model)  # twice is harmless
    assert model.config.text_config._attn_implementation == "sdpa"  # the language model is untouched
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert vision_windows.NAME not in json.dumps(saved)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved")  # loads without vqrl's attention
    assert vision_once.base_model(reloaded).visual.config._attn_implementation != vision_windows.NAME


def test_plans_are_not_reused_for_a_changed_or_new_tensor():
    plans = vision_windows._Plans(slots=2)
    cu = torch.tensor([0, 4, 8])
    first = plans.get(cu)
    assert plans.get(cu) is first
    cu[1] = 2  # modified in place: read again
    assert plans.get(cu) is not first and plans.get(cu).groups[0][0] == 2
    other = torch.tensor([0, 4, 8])
    assert plans.get(other) is not first
