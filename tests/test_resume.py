"""A run stopped after step k and resumed continues at k+1 and sees the samples the uninterrupted run saw."""

from __future__ import annotations

import json
import os

from transformers import TrainerCallback

from trainer_utils import EXAMPLES, make_trainer
from vqrl.training import checkpoints


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _seen(path):
    rows = [json.loads(line) for line in open(path)]
    order = {}
    for r in rows:
        order.setdefault(r["step"], []).append(r["sample_id"])
    return order


def _run(model_dir, out, log, monkeypatch, stop_after=None, resume=None):
    monkeypatch.setenv("VQRL_TEST_RECORD", str(log))
    extra = {"resume": resume} if resume else {}
    trainer = make_trainer(model_dir, out, [os.path.join(EXAMPLES, "RL_examples.json")], reward_funcs=["recording:record_batch"],
                           max_steps=7, per_device_train_batch_size=4, num_generations=2, save_strategy="steps",
                           save_steps=2, save_total_limit=2, **extra)
    if stop_after:
        trainer.add_callback(StopAfter(stop_after))
    ckpt = checkpoints.resolve_resume(resume, str(out))
    trainer.train(resume_from_checkpoint=ckpt)
    return trainer


def test_resume_continues_with_the_same_data_order(tiny_model_dir, tmp_path, monkeypatch):
    # 12 records, 2 prompts per step: 7 steps cross an epoch boundary (epoch = 6 steps)
    _run(tiny_model_dir, tmp_path / "full", tmp_path / "full.jsonl", monkeypatch)
    full = _seen(tmp_path / "full.jsonl")
    assert sorted(full) == list(range(7))

    _run(tiny_model_dir, tmp_path / "cut", tmp_path / "cut.jsonl", monkeypatch, stop_after=4)
    assert checkpoints.latest_complete(str(tmp_path / "cut")).endswith("checkpoint-4")
    trainer = _run(tiny_model_dir, tmp_path / "cut", tmp_path / "cut.jsonl", monkeypatch, resume="auto")
    assert trainer.state.global_step == 7
    cut = _seen(tmp_path / "cut.jsonl")
    assert cut == full  # steps 0-3 before the stop, 4-6 after: same samples in the same order

    steps = [r["step"] for r in map(json.loads, open(tmp_path / "cut" / "metrics.jsonl")) if "loss" in r]
    assert steps == list(range(1, 8))  # every step logged exactly once across the restart
