"""The trainer's contract with TRL: vision (images AND videos) reaches the loss, rewards see the right record."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainer_utils import make_trainer, write_records

VIDEO_RECORDS = [
    {"video": "videos/rocket_pan_l0.mp4", "solution": 4.6, "type": "scoring_video"},
    {"video": "videos/coffee_pan_l2.mp4", "solution": 2.3, "type": "scoring_video"},
]
IMAGE_RECORDS = [
    {"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
    {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.4, "type": "scoring_image"},
]


def _generation_batch(trainer):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); we call the loss directly
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def _vision_grad(model) -> float:
    visual = model.model.visual
    return sum(float(p.grad.abs().sum()) for p in visual.parameters() if p.grad is not None)


@pytest.mark.parametrize("records, key", [(VIDEO_RECORDS, "pixel_values_videos"), (IMAGE_RECORDS, "pixel_values")])
def test_vision_reaches_the_loss(tiny_model_dir, tmp_path, records, key):
    """Changing the pixels changes the loss, and the vision tower gets gradient (TRL 1.16 drops video here)."""
    data = write_records(tmp_path / "d.json", records)
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["recording:length_reward"],
                           beta=0.1, freeze_vision_tower="false", per_device_train_batch_size=4, num_generations=2)
    inputs = _generation_batch(trainer)
    assert all(key in v for v in inputs["vision"])
    inputs["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])  # a fixed signal, independent of sampled text
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    assert _vision_grad(model) > 0, "vision tower got no gradient: pixels did not reach the loss"

    changed = dict(inputs)
    changed["vision"] = [{**v, key: torch.randn_like(v[key]) * 3} for v in inputs["vision"]]
    with torch.no_grad():
        loss_same = trainer.compute_loss(model, inputs)
        loss_changed = trainer.compute_loss(model, changed)
    assert torch.isclose(loss_same, loss.detach())
    assert not torch.isclose(loss_changed, loss_same), "loss did not depend on the pixels"


def test_mixed_image_and_video_batch_trains(tiny_model_dir, tmp_path):
    """One batch of images and videos: every log-prob forward of training gets both kinds of pixels with one grid
    per sequence and the modality of each placeholder token, and two optimizer steps change the weights."""
    data = write_records(tmp_path / "d.json", VIDEO_RECORDS + IMAGE_RECORDS)
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["recording:length_reward"],
                           max_steps=2, per_device_train_batch_size=8, num_generations=2)
    inputs = _generation_batch(trainer)
    kinds = {("v" if "pixel_values_videos" in v else "") + ("i" if "pixel_values" in v else "") for v in inputs["vision"]}
    assert kinds == {"v", "i"}

    passes = []

    def record(module, args, kwargs):
        if "labels" in kwargs and torch.is_grad_enabled():  # the training log-prob pass, not generation
            passes.append({k: kwargs.get(k) for k in ("input_ids", "image_grid_thw", "video_grid_thw",
                                                       "mm_token_type_ids", "pixel_values", "pixel_values_videos")})

    handle = trainer.model.register_forward_pre_hook(record, with_kwargs=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer._buffered_inputs = None
    trainer.train()
    handle.remove()
    assert trainer.state.global_step == 2
    assert len(passes) == 2
    for p in passes:
        ids, types = p["input_ids"], p["mm_token_type_ids"]
        assert p["pixel_values"] is not None and p["pixel_values_videos"] is not None
        # one grid per sequence of each kind (4 image and 4 video sequences), whatever the order of the batch
        assert p["image_grid_thw"].shape[0] == 4 and p["video_grid_thw"].shape[0] == 4
        assert torch.equal(types == 1, ids == trainer._image_token_id)
        assert torch.equal(types == 2, ids == trainer._video_token_id)
        image_rows = (types == 1).any(dim=1)
        assert image_rows.sum() == 4 and ((types == 2).any(dim=1) == ~image_rows).all()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all(".visual." not in f".{n}" for n in changed)  # the tower is frozen by default


def test_rewards_see_the_solution_of_their_own_prompt(tiny_model_dir, tmp_path, monkeypatch):
    """With 4 prompts per batch every completion's reward call gets its own record's solution (the seed read
    inputs[0] for all)."""
    records = [
        {"image": "images/" + name, "solution": sol, "type": "scoring_image", "question": f"Rate photo #{k}."}
        for k, (name, sol) in enumerate([("chelsea.jpg", 1.25), ("coffee.jpg", 2.5), ("rocket.jpg", 3.75),
                                         ("camera.jpg", 4.9)])
    ]
    data = write_records(tmp_path / "d.json", records)
    log = tmp_path / "seen.jsonl"
    monkeypatch.setenv("VQRL_TEST_RECORD", str(log))
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["recording:record_batch"],
                           max_steps=2, per_device_train_batch_size=8, num_generations=2)
    trainer.train()
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(seen) == 16 and len({s["sample_id"] for s in seen}) == 4
    by_question = {f"Rate photo #{k}.": r["solution"] for k, r in enumerate(records)}
    for s in seen:
        question = next(q for q in by_question if q in s["text"])
        assert s["solution"] == by_question[question]
    for i in range(0, len(seen), 2):  # generations of one prompt are consecutive
        assert seen[i]["sample_id"] == seen[i + 1]["sample_id"]
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    step_means = [r["rewards/record_batch/mean"] for r in logged if "rewards/record_batch/mean" in r]
    assert step_means and all(1.25 <= m <= 4.9 for m in step_means)


def test_rewards_get_the_group_size_of_the_mode_they_score(tiny_model_dir, tmp_path):
    """Ranking rewards need the group size: G in training, num_generations_eval in evaluation."""
    data = write_records(tmp_path / "d.json", IMAGE_RECORDS)
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["recording:group_size"],
                           num_generations=4, num_generations_eval=2, per_device_train_batch_size=4)
    prompts = [[{"role": "user", "content": "Rate it."}]] * 4
    completions = [[{"role": "assistant", "content": "<answer>3</answer>"}]] * 4
    for training, group in ((True, 4.0), (False, 2.0)):
        trainer.model.train(training)
        rewards = trainer._calculate_rewards(inputs=[{"solution": 3.0}] * 4, prompts=prompts,
                                             completions=completions, completion_ids_list=[[5]] * 4)
        assert rewards[:, 0].tolist() == [group] * 4


def test_completions_end_at_vision_tokens(tiny_model_dir, tmp_path):
    """Vision special tokens are not suppressed in sampling (the loss scores the whole vocabulary); a completion
    that samples one ends with it, its sampling log-probs with it, so the loss scores that choice; the share of such
    completions is logged."""
    data = write_records(tmp_path / "d.json", IMAGE_RECORDS)
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["recording:length_reward"])
    tok = trainer._tokenizer
    special = [tok.convert_tokens_to_ids(t) for t in
               ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")]
    assert trainer._vision_token_ids == sorted(special)
    # never suppressed in sampling: the loss scores the softmax over the whole vocabulary
    assert not set(trainer.generation_config.suppress_tokens or []) & set(special)
    image_pad, start = trainer._image_token_id, special[0]
    trainer.model.train()
    ids = [[105, 106, image_pad, 107], [105, 106], [start, 109], [108, 109, 110, start, image_pad]]
    logprobs = [[-1.0, -2.0, -3.0, -4.0], [-1.0, -2.0], [-5.0, -6.0], [-7.0, -8.0, -9.0, -1.0, -2.0]]
    ended, ended_logprobs = trainer._end_at_vision_tokens(ids, logprobs)
    assert ended == [[105, 106, image_pad], [105, 106], [start], [108, 109, 110, start]]
    assert ended_logprobs == [[-1.0, -2.0, -3.0], [-1.0, -2.0], [-5.0], [-7.0, -8.0, -9.0, -1.0]]
    assert trainer._metrics["train"]["completions/ended_at_vision_token"] == [0.75]
    assert trainer._end_at_vision_tokens([[105, 106]], None) == ([[105, 106]], None)


@pytest.mark.parametrize("vision_once", ["true", "false"])
def test_the_loss_scores_a_sampled_vision_token_as_the_model_would_sample_it(tiny_model_dir, tmp_path, vision_once):
    """The log-prob passes score a completion that ends with a sampled vision token (image placeholder, vision start)
    exactly as the model gives it after the completion's other tokens. Before 2026-12-02 such completions were cut
    before the token, which then never met the policy gradient (docs/learning.md); fed to the model as it is, it
    would be read as an image without features."""
    from vqrl.modeling import vision as V

    data = write_records(tmp_path / "d.json", IMAGE_RECORDS)
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["recording:length_reward"],
                           per_device_train_batch_size=4, num_generations=2, vision_once=vision_once)
    inputs = _generation_batch(trainer)
    tok = trainer._tokenizer
    enders = [trainer._image_token_id, tok.convert_tokens_to_ids("<|vision_start|>"), trainer._video_token_id,
              tok.convert_tokens_to_ids("<|vision_end|>")]
    completion = torch.tensor([[105, 106, end] for end in enders])
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    model = trainer.model
    with torch.no_grad():
        trainer._pending_vision = inputs["vision"]
        got, _, _ = trainer._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion], 1), torch.cat([prompt_mask, torch.ones_like(completion)], 1), 3)
        # the model's own distribution after each completion prefix, read without the last (vision) token
        x = torch.cat([prompt_ids, completion[:, :2]], 1)
        extra = V.collate(inputs["vision"])
        extra["mm_token_type_ids"] = V.mm_token_type_ids(x, trainer._image_token_id, trainer._video_token_id)
        with trainer.accelerator.autocast():  # as TRL's pass runs (bf16 autocast in these tests' flags)
            logits = model(input_ids=x, attention_mask=torch.cat([prompt_mask, torch.ones_like(completion[:, :2])],
                                                                 1), **extra).logits[:, -3:]
        want = logits.float().log_softmax(-1).gather(-1, completion[:, :, None])[:, :, 0]
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert torch.isfinite(got).all()


def test_bad_sample_policy(tiny_model_dir, tmp_path):
    from vqrl.data.records import DataError

    data = write_records(tmp_path / "d.json", IMAGE_RECORDS + [{"image": "images/nope.jpg", "solution": 3,
                                                                "type": "scoring_image"}])
    with pytest.raises(DataError, match=r"d.json:2: image file not found"):
        make_trainer(tiny_model_dir, tmp_path / "out", [data], reward_funcs=["recording:length_reward"])
    trainer = make_trainer(tiny_model_dir, tmp_path / "out2", [data], reward_funcs=["recording:length_reward"],
                           on_bad_sample="skip")
    assert len(trainer.train_dataset) == 2



@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_frozen_tower_with_trainable_merger(tiny_models, tmp_path, arch):
    """--train_merger keeps the projector(s) trainable under a frozen tower; without it the whole tower is frozen."""
    data = write_records(tmp_path / "d.json", [{"image": "images/chelsea.jpg", "solution": 4.5,
                                                 "type": "scoring_image"}])

    def visual(**overrides) -> dict[str, bool]:
        trainer = make_trainer(tiny_models(arch), tmp_path / "out", [data], freeze_vision_tower="true", **overrides)
        return {n: p.requires_grad for n, p in trainer.model.named_parameters() if ".visual." in f".{n}"}

    assert not any(visual().values())
    with_merger = visual(train_merger="true")
    assert {n for n, on in with_merger.items() if on} == {n for n in with_merger if "merger" in n} != set()
    assert not all(with_merger.values())
