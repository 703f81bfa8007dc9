"""The Refine trainer's PD reward: its value, its lack of gradient, any batch size, data-independent forward calls."""

from __future__ import annotations

import pytest
import torch

from trainer_utils import count_forward_calls, make_trainer, write_records
from vqrl.data.prompts import SCORE_PREFIX
from vqrl.trainers.refine import PD_WEIGHTS, thought_of

IMAGES = [
    {"image": "images/chelsea.jpg", "solution": 4.4008, "type": "scoring_image"},
    {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.37, "type": "scoring_image"},
    {"image": "images/coffee.jpg", "solution": 3.2, "type": "scoring_image"},
]
VIDEOS = [
    {"video": "videos/rocket_pan_l0.mp4", "solution": 4.6, "type": "scoring_video"},
    {"video": "videos/coffee_pan_l2.mp4", "solution": 2.3, "type": "scoring_video"},
    {"video": "videos/rocket_pan_l0.mp4", "solution": 4.1, "type": "scoring_video"},
]


def _refine(tiny_model_dir, tmp_path, records, **kw):
    data = write_records(tmp_path / "d.json", records)
    base = dict(trainer="refine", reward_funcs=["format", "answer"], num_generations=2,
                per_device_train_batch_size=4)
    base.update(kw)
    return make_trainer(tiny_model_dir, tmp_path / "out", [data], **base)


def _direct_prob(model, processor, prompt, text, target):
    """P of each target token by one plain forward of a single unpadded sequence."""
    from vqrl.trainers import vision as V

    ids, vision = V.encode_prompt(processor, prompt)
    tok = processor.tokenizer
    seq = ids + text + tok.encode(SCORE_PREFIX, add_special_tokens=False) + target
    input_ids = torch.tensor([seq])
    extra = V.collate([vision])
    extra["mm_token_type_ids"] = V.mm_token_type_ids(input_ids, model.config.image_token_id, model.config.video_token_id)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra).logits[0]
    start = len(seq) - len(target) - 1
    return torch.stack([logits[start + k].softmax(-1)[t] for k, t in enumerate(target)])


def test_pd_matches_a_direct_computation(tiny_model_dir, tmp_path):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2])
    row0, row1 = trainer.train_dataset[0], trainer.train_dataset[1]
    rows = [row0, row0, row1, row1]
    completions = [
        "<think>sharp cat, fine fur</think><answer>Score: 4.40</answer>",  # passes format + answer (4.4008)
        "<think>looks ok</think><answer>Score: 2.00</answer>",              # wrong answer: pd must be 0
        "<think>blurry, noisy</think><answer>Score: 1.50</answer>",         # passes (|1.5-1.37| <= 0.5)
        "no tags at all",                                                   # bad format: pd 0
    ]
    trainer._tokenize_prompts([r["prompt"] for r in rows])
    trainer.model.eval()
    pd = trainer._pd_rewards(completions, solution=[r["solution"] for r in rows],
                             prompt_nothink=[r["prompt_nothink"] for r in rows],
                             sample_id=[r["sample_id"] for r in rows], type=[r["type"] for r in rows])
    assert pd[1] == 0.0 and pd[3] == 0.0
    tok = trainer.processing_class.tokenizer
    w = torch.tensor(PD_WEIGHTS["paper"])
    for i in (0, 2):
        target = tok.encode(f"{rows[i]['solution']:.2f}", add_special_tokens=False)
        assert len(target) == 4  # "4", ".", "4", "0": rounded to two decimals, one token per digit
        think = tok.encode(thought_of(completions[i]), add_special_tokens=False)
        p_think = _direct_prob(trainer.model, trainer.processing_class, rows[i]["prompt"], think, target)
        p_nothink = _direct_prob(trainer.model, trainer.processing_class, rows[i]["prompt_nothink"], [], target)
        expected = float((w * (p_think - p_nothink)).sum().clamp(0, 1))
        assert pd[i] == pytest.approx(expected, abs=1e-5)


def test_pd_has_no_gradient(tiny_model_dir, tmp_path):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2])
    rows = [trainer.train_dataset[0]] * 2
    trainer._tokenize_prompts([r["prompt"] for r in rows])
    trainer.model.zero_grad(set_to_none=True)
    out = trainer._pd_rewards(["<think>a</think><answer>Score: 4.40</answer>"] * 2, solution=[4.4, 4.4],
                              prompt_nothink=[r["prompt_nothink"] for r in rows], sample_id=["a", "a"])
    assert all(isinstance(v, float) for v in out)
    assert all(p.grad is None for p in trainer.model.parameters())
    from vqrl.eval.inference import teacher_forced_probs

    probs = teacher_forced_probs(trainer.model, [[1, 2, 3]], [[4, 5]], [{}], 0)
    assert not probs[0].requires_grad


@pytest.mark.parametrize("prompts", [1, 3, 8])
def test_any_batch_size_trains(tiny_model_dir, tmp_path, prompts):
    records = (IMAGES + VIDEOS + IMAGES)[:max(prompts, 2)]
    trainer = _refine(tiny_model_dir, tmp_path, records, per_device_train_batch_size=2 * prompts, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1
    assert trainer.pd_forward_calls >= 2


def _count_forward_calls(trainer) -> int:
    """Model forward calls in one training step, generation excluded (it runs on gathered weights)."""
    calls = count_forward_calls(trainer)
    trainer.train()
    return calls["n"]


def test_forward_calls_do_not_depend_on_the_data(tiny_model_dir, tmp_path):
    counts = []
    for i, (records, length) in enumerate([(IMAGES, 4), (VIDEOS, 24), (IMAGES[:1] + VIDEOS[:2], 12)]):
        trainer = _refine(tiny_model_dir, tmp_path / str(i), records, max_completion_length=length, max_steps=1,
                          per_device_train_batch_size=6, num_generations=3, beta=0.04)
        counts.append(_count_forward_calls(trainer))
    assert counts[0] == counts[1] == counts[2] > 0
