"""M-RoPE positions computed once per prompt equal transformers' own get_rope_index on the whole batch, for Qwen2-VL,
Qwen2.5-VL and Qwen3-VL, on random batches of prompt groups (images, videos, text only; left-padded prompts,
completions of different lengths, right padding), and the original is called on fewer rows."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vqrl.modeling import rope_once, vision_once

MERGE = 2  # the tiny models' spatial merge size (tokens = t * h * w / MERGE**2)


@pytest.fixture(scope="module")
def bases(tiny_models):
    out = {}
    for arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        model = AutoModelForImageTextToText.from_pretrained(tiny_models(arch))
        out[arch] = vision_once.base_model(model)
    return out


def _medium(rng, kind, qwen3):
    """(type run(s) as a token type list, grid row) of one image or video."""
    t = 1 if kind == 1 else rng.choice([2, 4])
    h, w = 2 * rng.randint(1, 3), 2 * rng.randint(1, 3)
    per_frame = h * w // MERGE**2
    if kind == 2 and qwen3:  # Qwen3-VL: one run per frame, timestamps (text) between them
        types = []
        for _ in range(t):
            types += [0] * rng.randint(1, 3) + [2] * per_frame
        return types, [t, h, w]
    return [kind] * (t * per_frame), [t, h, w]


def _batch(rng, qwen3, with_seconds):
    prompts, images, videos, seconds = [], [], [], []
    for _ in range(rng.randint(1, 4)):
        types = [0] * rng.randint(1, 4)
        own_images, own_videos, own_seconds = [], [], []
        for _ in range(rng.choice([0, 1, 1, 2])):
            kind = rng.choice([1, 1, 2])
            run, grid = _medium(rng, kind, qwen3)
            types += run + [0] * rng.randint(1, 3)
            (own_images if kind == 1 else own_videos).append(grid)
            if kind == 2:
                own_seconds.append(rng.choice([0.5, 1.0, 2.0]))
        for _ in range(rng.randint(1, 4)):  # the prompt's G sequences: same prompt, completions of any length
            completion = [0] * rng.randint(1, 6)
            if rng.random() < 0.1:  # a completion that ends at a sampled vision token
                completion[-1] = 1
            prompts.append((types, completion))
            images += own_images
            videos += own_videos
            seconds += own_seconds
    if any(c[-1] == 1 for _, c in prompts):  # such a token has no grid: keep the batch consistent
        prompts = [(t, [0] * len(c)) for t, c in prompts]
    width_p = max(len(t) for t, _ in prompts)
    width_c = max(len(c) for _, c in prompts)
    types = torch.zeros(len(prompts), width_p + width_c, dtype=torch.long)
    mask = torch.zeros_like(types)
    for b, (t, c) in enumerate(prompts):
        start = width_p - len(t)
        types[b, start:width_p] = torch.tensor(t)
        types[b, width_p:width_p + len(c)] = torch.tensor(c)
        mask[b, start:width_p + len(c)] = 1
    ids = torch.randint(20, 90, types.shape)
    kwargs = {"attention_mask": mask if rng.random() < 0.9 else None}
    if kwargs["attention_mask"] is None:  # no mask: every token is attended, so no padding either
        keep = mask.bool().all(0)
        types, ids = types[:, keep], ids[:, keep]
        if not all(mask[:, ~keep].eq(0).all(0)) or types.shape[1] == 0:
            return None
    kwargs["image_grid_thw"] = torch.tensor(images) if images else None
    kwargs["video_grid_thw"] = torch.tensor(videos) if videos else None
    if with_seconds and videos:
        kwargs["second_per_grid_ts"] = torch.tensor(seconds)
    return ids, types.int(), kwargs


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_positions_shared_per_prompt_equal_transformers_own(bases, arch, monkeypatch):
    base = bases[arch]
    original = type(base).get_rope_index.__get__(base)
    calls = []
    monkeypatch.setattr(type(base), "get_rope_index", lambda self, input_ids, **kw: (
        calls.append(input_ids.shape[0]), original(input_ids, **kw))[1])
    base.__dict__.pop("get_rope_index", None)
    assert rope_once.install(base) and not rope_once.install(base)  # once per instance
    rng = random.Random(0)
    saved = 0
    for draw in range(150):
        batch = _batch(rng, qwen3=arch == "qwen3_vl", with_seconds=arch == "qwen2_5_vl")
        if batch is None:
            continue
        ids, types, kwargs = batch
        want = original(ids, mm_token_type_ids=types, **kwargs)
        found = rope_once.plan(types, kwargs["attention_mask"], kwargs["image_grid_thw"], kwargs["video_grid_thw"],
                               kwargs.get("second_per_grid_ts"))
        calls.clear()
        got = base.get_rope_index(ids, mm_token_type_ids=types, **kwargs)
        assert torch.equal(got[0], want[0]), f"draw {draw}: positions differ"
        assert torch.equal(got[1], want[1]) and got[1].dtype == want[1].dtype, f"draw {draw}: deltas differ"
        if found is not None:
            saved += 1
            assert calls[0] == len(found[1]) < ids.shape[0]  # the original ran on the representatives only,
            assert calls[1:] == ([ids.shape[0]] if saved == 1 else [])  # and on the whole batch the first time (check)
        else:
            assert calls == [ids.shape[0]]
    base.__dict__.pop("get_rope_index")
    assert saved >= 40  # most draws share something (a prompt with several sequences)


def test_nothing_shared_or_an_unexpected_batch_calls_the_original_as_is(bases):
    types = torch.tensor([[0, 1, 0], [0, 0, 0]], dtype=torch.int)  # two different rows: nothing to share
    assert rope_once.plan(types, None, torch.tensor([[1, 2, 2]]), None) is None
    same = torch.tensor([[0, 1, 0], [0, 1, 0]], dtype=torch.int)
    assert rope_once.plan(same, None, torch.tensor([[1, 2, 2]]), None) is None  # two image runs, one grid
    assert rope_once.plan(same, torch.tensor([[1, 1, 1], [0, 0, 0]]), torch.tensor([[1, 2, 2]]), None) is None
    rep_of, reps, images, videos = rope_once.plan(same, None, torch.tensor([[1, 2, 2], [1, 2, 2]]), None)
    assert rep_of == [0, 0] and reps == [0] and images == [0] and videos == []
    assert not rope_once.install(torch.nn.Linear(1, 1))  # not a Qwen-VL base model


def test_a_difference_from_transformers_is_an_error_naming_its_version(bases, monkeypatch):
    base = bases["qwen2_5_vl"]
    base.__dict__.pop("get_rope_index", None)
    monkeypatch.setattr(rope_once, "expand", lambda positions, rep_mask, rep_index, mask, dtype: (
        torch.zeros(3, *mask.shape, dtype=torch.long), torch.zeros(mask.shape[0], 1, dtype=torch.long)))
    assert rope_once.install(base)
    types = torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]], dtype=torch.int)
    import transformers
    with pytest.raises(RuntimeError, match=f"transformers {transformers.__version__}'s Qwen2_5_VLModel.get_rope_index"):
        base.get_rope_index(torch.randint(20, 90, (2, 4)), mm_token_type_ids=types,
                            image_grid_thw=torch.tensor([[1, 2, 2], [1, 2, 2]]))
    base.__dict__.pop("get_rope_index")


def test_the_trainer_shares_positions_with_vision_once_only(tiny_models, tmp_path, caplog):
    import logging

    from test_equivalence import IMAGES, _fixed_batch, _loss_and_grads, _trainer

    trainer = _trainer(tiny_models("qwen2_5_vl"), tmp_path / "on", IMAGES)
    base = vision_once.base_model(trainer.model)
    assert "get_rope_index" in vars(base)
    with caplog.at_level(logging.INFO, logger=rope_once.logger.name):
        shared = _loss_and_grads(trainer, _fixed_batch(trainer, 2))
    assert "M-RoPE positions computed once per prompt" in caplog.text  # the loss pass went through it, checked
    del base.get_rope_index  # transformers' own, row by row
    own = _loss_and_grads(trainer, _fixed_batch(trainer, 2))
    assert torch.equal(shared[0], own[0]) and shared[1].keys() == own[1].keys()
    assert all(torch.equal(shared[1][k], own[1][k]) for k in own[1])
    off = _trainer(tiny_models("qwen2_5_vl"), tmp_path / "off", IMAGES, vision_once="false")
    assert "get_rope_index" not in vars(vision_once.base_model(off.model))
