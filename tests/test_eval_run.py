"""`vqrl eval`: expected scores by hand from the logits, resuming a half-done run, per-dataset outputs."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from trainer_utils import EXAMPLES, write_records
from vqrl.eval import run as eval_run


def _args(model, data, out, **kw):
    parser = argparse.ArgumentParser()
    eval_run.add_arguments(parser)
    argv = ["--model", model, "--data", *data, "--image_root", EXAMPLES, "--video_root", EXAMPLES, "--out", str(out),
            "--max_new_tokens", "8", "--batch_size", "3"]
    for k, v in kw.items():
        argv += [f"--{k}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


def test_expected_score_matches_a_hand_computation(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.data.dataset import MediaLoader
    from vqrl.data.media import VisionSpec
    from vqrl.data.prompts import SCORE_PREFIX, PromptConfig, build_messages
    from vqrl.eval.inference import expected_scores
    from vqrl.trainers import vision as V

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="left")
    loader = MediaLoader(VisionSpec.for_processor(processor), EXAMPLES, EXAMPLES)
    recs = [{"image": "images/coffee.jpg", "type": "scoring_image", "solution": 3.0},
            {"video": "videos/rocket_pan_l0.mp4", "type": "scoring_video", "solution": 4.0}]
    encoded = [V.encode_prompt(processor, build_messages(r, loader.parts(r), PromptConfig(think=False))) for r in recs]
    got = expected_scores(model, processor, [e[0] for e in encoded], [e[1] for e in encoded])
    tok = processor.tokenizer
    for (ids, vision), value in zip(encoded, got):
        seq = torch.tensor([ids + tok.encode(SCORE_PREFIX, add_special_tokens=False)])
        extra = V.collate([vision])
        extra["mm_token_type_ids"] = V.mm_token_type_ids(seq, model.config.image_token_id, model.config.video_token_id)
        with torch.no_grad():
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), **extra).logits[0, -1]
        digit_logits = torch.stack([logits[tok.convert_tokens_to_ids(str(d))] for d in range(1, 6)])
        p = digit_logits.softmax(-1)
        assert value == pytest.approx(float(sum((d + 1) * p[d] for d in range(5))), abs=1e-4)
        assert 1.0 <= value <= 5.0


def test_interrupted_evaluation_resumes_to_the_same_metrics(tiny_model_dir, tmp_path, monkeypatch):
    data = [os.path.join(EXAMPLES, "RL_examples.json"), os.path.join(EXAMPLES, "RL_examples_eval.json")]
    full = eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "full", mode="expected", no_think=True))

    calls = {"n": 0}
    original = eval_run._score_batch

    def crash_after_two_batches(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(*a, **k)

    monkeypatch.setattr(eval_run, "_score_batch", crash_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "cut", mode="expected", no_think=True))
    rows = (tmp_path / "cut" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # header + two batches of 3
    monkeypatch.setattr(eval_run, "_score_batch", original)
    resumed = eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "cut", mode="expected", no_think=True))
    assert json.dumps(resumed, sort_keys=True) == json.dumps(full, sort_keys=True)
    assert set(resumed) == {"RL_examples", "RL_examples_eval", "overall"}
    assert resumed["overall"]["n"] == 16
    for name in resumed:
        assert (tmp_path / "cut" / f"scatter_{name}.png").exists()


def test_greedy_and_sample_modes_write_completions(tiny_model_dir, tmp_path):
    data = write_records(tmp_path / "d.json", [
        {"image": "images/coffee.jpg", "type": "scoring_image", "solution": 3.0, "dataset": "a"},
        {"image": "images/rocket.jpg", "type": "scoring_image", "solution": 4.0, "dataset": "b"},
    ])
    for mode in ("greedy", "sample"):
        metrics = eval_run.evaluate(_args(tiny_model_dir, [data], tmp_path / mode, mode=mode, num_samples=2))
        assert set(metrics) == {"a", "b", "overall"}  # grouped by the records' `dataset` field
        text = (tmp_path / mode / "predictions.csv").read_text()
        assert text.count("\n") == 3
