"""The optimised log-prob path equals the plain one: same log-probs, loss and gradients on a fixed batch (CPU, fp32).

Guards vision-once (each image/video encoded once per forward) against our per-sequence path and against plain
trl.GRPOTrainer's own image path; each comparison is checked to be sensitive (pixels matter, work is deduplicated).
"""

from __future__ import annotations

import pytest
import torch
import trl

from trainer_utils import count_vision_tower, make_trainer, write_records
from vqrl.modeling import vision as V

G = 4
IMAGES = [
    {"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
    {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.4, "type": "scoring_image"},
]
VIDEO = [{"video": "videos/rocket_pan_l0.mp4", "solution": 3.6, "type": "scoring_video"}]


def _trainer(model_dir, tmp_path, records, **overrides):
    torch.set_num_threads(1)
    data = write_records(tmp_path / "d.json", records)
    overrides.setdefault("per_device_train_batch_size", G * len(records))
    trainer = make_trainer(model_dir, tmp_path / "out", [data], reward_funcs=["recording:length_reward"],
                           freeze_vision_tower="false", num_generations=G, bf16="false", dtype="float32", **overrides)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); we call the loss directly
    return trainer


def _fixed_batch(trainer, n_prompts: int, completion_len: int = 6) -> dict:
    """n_prompts records × G completions of fixed token ids, prompts encoded as the trainer does (the G sequences of
    a record share one vision dict), left-padded; fixed advantages and reference log-probs."""
    rows = [trainer.train_dataset[i] for i in range(n_prompts)]
    trainer._pending_sample_ids = [r["sample_id"] for r in rows for _ in range(G)]
    ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows for _ in range(G)])
    vision = trainer._pending_vision
    trainer._pending_vision = trainer._pending_sample_ids = None
    width, pad = max(map(len, ids)), trainer._tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids])
    prompt_mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in ids])[:, None]).long()
    gen = torch.Generator().manual_seed(0)
    n = len(ids)
    # plain text ids: above the vision special tokens (9-13 in the tiny tokenizer), which a completion holds only as
    # its last, sampled token, blanked in what the model reads (test_trainer.py)
    completion_ids = torch.randint(max(trainer._vision_token_ids) + 1, 200, (n, completion_len), generator=gen)
    completion_mask = torch.ones(n, completion_len, dtype=torch.long)
    completion_mask[::3, -2:] = 0  # some shorter completions
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.randn(n, generator=gen),
        "ref_per_token_logps": -5 + torch.randn(n, completion_len, generator=gen) * 0.1,
        "num_items_in_batch": completion_mask.sum(), "vision": vision,
    }


def _loss_and_grads(trainer, inputs, compute_loss=None):
    model = trainer.model
    model.zero_grad()
    loss = (compute_loss or trainer._compute_loss)(model, inputs)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_same(a, b, rtol=1e-4, atol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys()
    assert any(".visual." in k for k in grads_a), "the vision tower got no gradient"
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_vision_once_equals_per_sequence(tiny_models, tmp_path, arch):
    """2 image prompts + 1 video prompt × G=4: log-probs (chunks straddling groups), loss and every gradient."""
    trainer = _trainer(tiny_models(arch), tmp_path, IMAGES + VIDEO, beta=0.04)
    inputs = _fixed_batch(trainer, 3)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)

    def logps(on: bool, vision=None):
        trainer.vision_once = on
        trainer._pending_vision = vision or inputs["vision"]
        try:
            with torch.no_grad():
                return trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 6, batch_size=6)[0]
        finally:
            trainer._pending_vision = None

    seen, handle = count_vision_tower(trainer)
    on = logps(True)
    work_on = dict(seen)
    seen.update(calls=0, rows=0)
    off = logps(False)
    handle.remove()
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5)
    assert work_on["calls"] == seen["calls"], "vision-once must not change the number of tower calls (ZeRO-3)"
    assert work_on["rows"] < seen["rows"], "vision-once encoded as many patches as the per-sequence path"

    # a perturbed pixel of the first image changes its sequences' log-probs, and only theirs
    first = inputs["vision"][0]
    changed = {**first, "pixel_values": first["pixel_values"].clone()}
    changed["pixel_values"][0] += 1.0
    moved = logps(True, [changed if v is first else v for v in inputs["vision"]])
    differs = (moved - on).abs().amax(dim=1) > 1e-6
    assert differs[:G].all() and not differs[G:].any()

    trainer.vision_once = True
    result_on = _loss_and_grads(trainer, inputs)
    trainer.vision_once = False
    result_off = _loss_and_grads(trainer, inputs)
    _assert_same(result_on, result_off)


def test_loss_and_grads_equal_plain_trl(tiny_model_dir, tmp_path):
    """Image-only batch: our trainer (vision-once on) and plain trl.GRPOTrainer's own pixel_values path give the same
    loss and gradients; a perturbed pixel changes TRL's loss (the comparison is not vacuous)."""
    ours = _trainer(tiny_model_dir, tmp_path, IMAGES, beta=0.0)
    plain = trl.GRPOTrainer(model=ours.model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                            args=ours.args, train_dataset=ours.train_dataset, processing_class=ours.processing_class)
    plain.current_gradient_accumulation_steps = 1
    inputs = _fixed_batch(ours, 2)
    del inputs["ref_per_token_logps"]

    def trl_inputs(vision):
        """TRL's layout: pixels concatenated per sequence, grids per image, images per sequence, modality ids."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        fields = V.collate(vision)
        return {**{k: v for k, v in inputs.items() if k != "vision"}, **fields,
                "num_images": [int(v["image_grid_thw"].shape[0]) for v in vision],
                "mm_token_type_ids": V.mm_token_type_ids(ids, ours._image_token_id, ours._video_token_id)}

    # old log-probs near the current ones (as with num_iterations > 1), so the loss value depends on the log-probs
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        fields = {k: v for k, v in trl_inputs(inputs["vision"]).items()
                  if k in ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids")}
        current = plain._get_per_token_logps_and_entropies(plain.model, ids, mask, 6, **fields)[0]
    noise = torch.randn(current.shape, generator=torch.Generator().manual_seed(1)) * 0.05
    inputs["old_per_token_logps"] = current + noise

    ours.vision_once = True
    result_ours = _loss_and_grads(ours, inputs)
    result_trl = _loss_and_grads(plain, trl_inputs(inputs["vision"]), plain._compute_loss)
    _assert_same(result_ours, result_trl)

    first = inputs["vision"][0]
    changed = {**first, "pixel_values": first["pixel_values"] + 0.5}
    moved = _loss_and_grads(plain, trl_inputs([changed] * G + inputs["vision"][G:]), plain._compute_loss)
    assert not torch.isclose(moved[0], result_trl[0], rtol=0, atol=1e-6), "the loss did not depend on the pixels"


def test_micro_batches_of_whole_groups_give_the_same_step(tiny_model_dir, tmp_path):
    """dapo (the default), 2 micro-batches per step: grouping changes which sequences share a micro-batch, not the
    step's summed loss and gradients, nor the RNG stream after the shuffle; TRL's per-sequence shuffle mixes groups."""
    trainer = _trainer(tiny_model_dir, tmp_path, IMAGES, beta=0.04, gradient_accumulation_steps=2,
                       per_device_train_batch_size=G)
    trainer.current_gradient_accumulation_steps = 2
    assert trainer.args.steps_per_generation == 2 and trainer.loss_type == "dapo"
    torch.manual_seed(0)
    batch = next(iter(trainer.get_train_dataloader()))

    def step(on: bool):
        trainer.vision_once, trainer._step, trainer._buffered_inputs = on, 0, None
        torch.manual_seed(1)
        trainer._prepare_inputs(batch)
        rng = torch.get_rng_state()
        micro = trainer._buffered_inputs
        results = [_loss_and_grads(trainer, m) for m in micro]
        loss = sum(r[0] for r in results)
        grads = {k: sum(r[1][k] for r in results) for k in results[0][1]}
        return (loss, grads), rng, [len({id(v) for v in m["vision"]}) for m in micro]

    grouped, rng_grouped, distinct_grouped = step(True)
    mixed, rng_mixed, distinct_mixed = step(False)
    assert distinct_grouped == [1, 1]
    assert distinct_mixed != [1, 1], "TRL's shuffle happened to group this batch: the test would be vacuous"
    assert torch.equal(rng_grouped, rng_mixed)
    _assert_same(grouped, mixed)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_generation_prefill_encodes_each_image_once(tiny_models, tmp_path, arch):
    """Generation's prefill sees each record's image or video once (not once per completion) and samples the same
    completions, token for token, as the per-sequence path under the same seed."""
    trainer = _trainer(tiny_models(arch), tmp_path, IMAGES + VIDEO, beta=0.0, max_completion_length=8)
    rows = [trainer.train_dataset[i] for i in range(3)]

    def sample(on: bool):
        trainer.vision_once = on
        trainer._pending_sample_ids = [r["sample_id"] for r in rows for _ in range(G)]
        ids, images, fields = trainer._tokenize_prompts([r["prompt"] for r in rows for _ in range(G)])
        seen, handle = count_vision_tower(trainer)
        torch.manual_seed(3)
        try:
            completions, _ = trainer._generate_single_turn(ids, images, fields, G)
        finally:
            handle.remove()
            trainer._pending_vision = trainer._pending_sample_ids = None
        grids = [g for key in ("image_grid_thw", "video_grid_thw") for g in fields.get(key, [])]
        return completions, seen["rows"], sum(int(g.prod()) for g in grids)

    once, rows_once, rows_all = sample(True)
    per_sequence, rows_off, _ = sample(False)
    assert rows_off == rows_all and rows_once == rows_all // G
    assert once == per_sequence
    assert len({tuple(c) for c in once}) > 1, "all completions equal: the comparison would be vacuous"


def test_compiled_generation_choice(tiny_model_dir, tmp_path):
    """auto keeps HF generate's dynamic cache on the CPU; true asks for the static cache and compile path."""
    auto = _trainer(tiny_model_dir, tmp_path, IMAGES)
    assert auto.generation_config.cache_implementation is None and auto.generation_config.disable_compile
    forced = _trainer(tiny_model_dir, tmp_path, IMAGES, compiled_generation="true")
    assert forced.generation_config.cache_implementation == "static"
    assert forced.generation_config.disable_compile is False
    assert forced.generation_kwargs["cache_implementation"] == "static"
    with pytest.raises(ValueError, match="compiled_generation"):
        _trainer(tiny_model_dir, tmp_path, IMAGES, compiled_generation="sometimes")


def test_compiled_generation_auto_is_on_only_for_plain_cuda_runs(tiny_model_dir, tmp_path, monkeypatch):
    """auto turns the static cache and compile on where it was measured to help: HF generation on a CUDA device,
    without vLLM, ZeRO-3, FSDP or peft; true never applies to vLLM rollouts."""
    from types import SimpleNamespace

    trainer = _trainer(tiny_model_dir, tmp_path, IMAGES, compiled_generation="auto")
    assert trainer._compiled_generation() is False  # the CPU
    monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(device=SimpleNamespace(type="cuda")))
    assert trainer._compiled_generation() is True
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    assert trainer._compiled_generation() is False
    monkeypatch.setattr(trainer, "is_fsdp_enabled", False)
    monkeypatch.setattr(trainer.model, "peft_config", {"default": None}, raising=False)
    assert trainer._compiled_generation() is False
    monkeypatch.delattr(trainer.model, "peft_config")
    monkeypatch.setattr(trainer, "use_vllm", True)
    assert trainer._compiled_generation() is False
    monkeypatch.setattr(trainer.args, "compiled_generation", "true")
    assert trainer._compiled_generation() is False
    monkeypatch.setattr(trainer, "use_vllm", False)
    assert trainer._compiled_generation() is True


def test_teacher_forced_probs_encode_once(tiny_model_dir, tmp_path):
    """Refine's PD pass: sharing each record's encoding across its G sequences gives the same probabilities."""
    from vqrl.modeling.teacher_forcing import teacher_forced_probs

    trainer = _trainer(tiny_model_dir, tmp_path, IMAGES)
    inputs = _fixed_batch(trainer, 2)
    prefixes = [[t for t, m in zip(p, mask) if m] for p, mask in zip(inputs["prompt_ids"].tolist(),
                                                                       inputs["prompt_mask"].tolist())]
    targets = [[17, 23, 19]] * len(prefixes)

    def probs(once: bool):
        seen, handle = count_vision_tower(trainer)
        try:
            out = teacher_forced_probs(trainer.model, prefixes, targets, inputs["vision"], 0, encode_once=once)
        finally:
            handle.remove()
        return torch.stack(out), seen["rows"]

    (once, rows_once), (plain, rows_plain) = probs(True), probs(False)
    torch.testing.assert_close(once, plain, rtol=1e-5, atol=1e-6)
    assert rows_once * G == rows_plain
    assert not torch.allclose(plain[0], plain[G]), "both images gave the same probabilities: the test is vacuous"


@pytest.mark.parametrize("zero3", [False, True])
def test_auto_turns_vision_once_and_compiled_generation_on_under_zero3(monkeypatch, zero3):
    """Both were off under ZeRO-3 "until verified there"; the one-GPU H200 run of scripts/zero3_equivalence_check.py
    (same loss, gradient norm, reward and completion lengths with both on as with both off; docs/perf.md) verified
    them on one process, so `auto` turns them on there, compiled decoding only while TRL gathers the whole model for
    generation, vision-once not yet with several ZeRO-3 ranks."""
    from types import SimpleNamespace

    from vqrl.trainers import base

    monkeypatch.setattr(base, "is_deepspeed_zero3_enabled", lambda: zero3)
    monkeypatch.delenv(base.VISION_ONCE_ENV, raising=False)

    def fake(gather=True, device="cuda", vllm=False, processes=1, **settings):
        args = SimpleNamespace(**{"vision_once": "auto", "compiled_generation": "auto",
                                  "ds3_gather_for_generation": gather, **settings})
        accelerator = SimpleNamespace(device=torch.device(device), num_processes=processes)
        return SimpleNamespace(args=args, use_vllm=vllm, accelerator=accelerator, is_fsdp_enabled=False,
                               model=torch.nn.Linear(1, 1))

    assert base.VQRLTrainer._resolve_vision_once(fake()) is True
    # several ZeRO-3 ranks: each tower call is a collective, and that case has not run on GPUs: off until it has
    assert base.VQRLTrainer._resolve_vision_once(fake(processes=2)) is (not zero3)
    assert base.VQRLTrainer._resolve_vision_once(fake(processes=2, vision_once="true")) is True
    assert base.VQRLTrainer._compiled_generation(fake()) is True
    assert base.VQRLTrainer._compiled_generation(fake(gather=False)) is (not zero3)  # per-layer gathers: not compiled
    assert base.VQRLTrainer._compiled_generation(fake(device="cpu")) is False
    assert base.VQRLTrainer._compiled_generation(fake(vllm=True)) is False
    assert base.VQRLTrainer._resolve_vision_once(fake(vision_once="false")) is False
