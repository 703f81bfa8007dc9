"""`make demo` shows learning: the embedded model is format-warmed, so rewards differ within a group, the gradient is
not zero and the reward rises. The warm-up's examples are checked fast; the demo's own run is a slow test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vqrl.rewards import build_reward_funcs
from vqrl.training.warmup import FormatExamples

REPO = Path(__file__).resolve().parents[1]


def test_warmup_examples_have_the_format_and_random_scores():
    examples = FormatExamples(64, seed=3)
    fmt, = build_reward_funcs(["format"])
    rows = [examples[i] for i in range(64)]
    texts = [r["completion"][0]["content"][0]["text"] for r in rows]
    assert fmt([[{"role": "assistant", "content": t}] for t in texts], solution=[3.0] * 64) == [1.0] * 64
    scores = [float(t.split("Score: ")[1].split("<")[0]) for t in texts]
    assert min(scores) < 1.8 and max(scores) > 4.2  # spread over the scale: nothing about quality to learn
    assert examples[5]["completion"] == FormatExamples(64, seed=3)[5]["completion"]  # reproducible
    assert examples[5]["completion"] != FormatExamples(64, seed=4)[5]["completion"]
    assert all(len(r["images"]) == 1 and r["images"][0].size == (112, 112) for r in rows)
    import numpy as np

    for r in rows[:8]:  # something to look at: a gradient with noise, neither flat nor saturated
        pixels = np.asarray(r["images"][0], dtype=float)
        assert pixels.std() > 5 and 20 < pixels.mean() < 235 and len(np.unique(pixels)) > 50
    assert {"type": "image"} in rows[0]["prompt"][-1]["content"]


@pytest.mark.slow
def test_the_demo_run_learns(tmp_path):
    """finetune_RL.sh's demo as `make demo` runs it, with the embedded model built from scratch (a first demo)."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHON": sys.executable, "NPROC": "0", "OMP_NUM_THREADS": "1", "OUTPUT": str(out),
           "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    for name in ("MODEL", "RECIPE", "DATA", "IMAGE_ROOT", "VIDEO_ROOT", "MAX_STEPS", "LR", "BATCH", "VQRL_HEARTBEAT"):
        env.pop(name, None)
    proc = subprocess.run(["bash", str(REPO / "finetune_RL.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    assert len(steps) == 30
    moving = [r["grad_norm"] for r in steps if r["grad_norm"] > 0]
    assert len(moving) >= 27, [r["grad_norm"] for r in steps]  # the weights change (they never did before)

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    # 10-step windows: 5-step means of 8 sampled completions are noisy, and the trajectory differs between CPUs for
    # the same code (float rounding): the first 5 -> last 5 rise was 0.18 / 0.36 / 0.48 for seeds 42 / 1 / 2 on an
    # AMD EPYC (2026-12-02), the 10-step rise 0.245 / 0.235 / 0.49; without learning it stays near 0
    first, last = steps[:10], steps[-10:]
    assert mean(last, "reward") > mean(first, "reward") + 0.15, (mean(first, "reward"), mean(last, "reward"))
    assert 0.2 < mean(steps[:5], "rewards/format/mean") < 0.95  # the warm-up taught the format, leaving room
    assert (out / "final" / "model.safetensors").exists() and (out / "curves.png").exists()


def test_the_warmup_entry_wants_exactly_one_folder(capsys):
    from vqrl.training.warmup import main

    assert main([]) == 2 and main(["a", "b"]) == 2
    assert capsys.readouterr().err.count("usage: python -m vqrl.training.warmup OUT") == 2


@pytest.fixture
def recording_sft(monkeypatch):
    """TRL's SFTTrainer replaced by one that records what the warm-up gives it (and trains nothing)."""
    import trl

    seen = {"removed": [], "added": []}

    class RecordingSFT:
        def __init__(self, model, args, train_dataset, processing_class):
            seen.update(model=model, args=args, dataset=train_dataset, processor=processing_class)

        def remove_callback(self, cb):
            seen["removed"].append(cb)

        def add_callback(self, cb):
            seen["added"].append(cb)

        def train(self):
            seen["trained"] = True

    monkeypatch.setattr(trl, "SFTTrainer", RecordingSFT)
    return seen


def test_the_warmup_trains_in_full_precision_on_the_cpu_and_saves_a_float32_model(tiny_model_dir, tmp_path,
                                                                                   recording_sft):
    """The embedded model must be the same on every machine: the warm-up trains on the CPU in float32 (no bf16 or
    fp16 autocast, which would change its numbers and the demo's), with the vision tower frozen, on the completion
    only, with images kept (no column pruning, no truncation), and saves float32 safetensors with the processor."""
    import torch
    from transformers.trainer_callback import ProgressCallback

    from vqrl.training.progress import CompactProgress
    from vqrl.training.warmup import format_warmup

    seen = recording_sft
    out = format_warmup(tiny_model_dir, tmp_path / "model", steps=3, batch=2, seed=5)
    args, model = seen["args"], seen["model"]
    assert out == tmp_path / "model" and seen["trained"]
    assert len(seen["dataset"]) == 6 and seen["dataset"][5] is not None  # steps x batch examples
    assert args.use_cpu is True and args.bf16 is False and args.fp16 is False
    assert args.max_steps == 3 and args.per_device_train_batch_size == 2 and args.seed == 5
    assert args.completion_only_loss is True and args.remove_unused_columns is False and args.max_length is None
    assert args.gradient_checkpointing is False and args.dataloader_num_workers == 0
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 1  # 10 % of the steps, at least one
    assert seen["removed"] == [ProgressCallback] and [type(c) for c in seen["added"]] == [CompactProgress]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert any(p.requires_grad for p in model.model.language_model.parameters())
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    format_warmup(tiny_model_dir, tmp_path / "model2", steps=25, batch=1)
    assert seen["args"].warmup_steps == 2 and len(seen["dataset"]) == 25
    format_warmup(tiny_model_dir, tmp_path / "model3")  # the embedded model's recipe: build_embedded's defaults
    args = seen["args"]
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate, args.seed) == (120, 8, 4e-3, 0)
    assert (args.warmup_steps, args.weight_decay, args.logging_steps, args.save_strategy) == (12, 0.0, 5, "no")
    assert len(seen["dataset"]) == 960 and seen["processor"].image_processor.size["longest_edge"] == 12544
    assert seen["dataset"][0]["completion"] == FormatExamples(1, seed=0)[0]["completion"]  # seed 0, thinking


def test_the_embedded_model_is_published_complete_in_one_rename(tmp_path, monkeypatch):
    """build_embedded stages the random model and its warm-up beside the target, publishes the warmed model with its
    completion marker, and leaves no staging behind; `python -m vqrl.training.warmup OUT` builds it at OUT's
    absolute path."""
    from vqrl.training import checkpoints, warmup

    calls = []

    def fake_warmup(model_dir, out, **kwargs):
        calls.append((Path(model_dir), Path(out)))
        assert (Path(model_dir) / "config.json").is_file()  # the random model, built first
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "model.safetensors").write_bytes(b"weights")
        return Path(out)

    monkeypatch.setattr(warmup, "format_warmup", fake_warmup)
    target = tmp_path / "embedded"
    (tmp_path / ".staging-embedded" / "model").mkdir(parents=True)  # an earlier build that crashed mid-way
    (tmp_path / ".staging-embedded" / "model" / "adapter_model.safetensors").write_bytes(b"stale")
    assert warmup.build_embedded(target) == target
    assert sorted(os.listdir(target)) == sorted(["model.safetensors", checkpoints.MARKER])  # nothing stale in it
    assert checkpoints.marker_step(str(target)) == 0
    assert calls == [(tmp_path / ".staging-embedded" / "random", tmp_path / ".staging-embedded" / "model")]
    assert (target / "model.safetensors").read_bytes() == b"weights" and (target / checkpoints.MARKER).is_file()
    assert not (tmp_path / ".staging-embedded").exists()
    built = []
    monkeypatch.setattr(warmup, "build_embedded", built.append)
    monkeypatch.chdir(tmp_path)
    assert warmup.main(["rel/model"]) == 0 and built == [str(tmp_path / "rel" / "model")]




def test_the_warmup_examples_are_pinned_to_their_seed():
    """The embedded model (and the demo's numbers in the README) are what the seed-0 examples make them: the same
    images, scores and questions on every machine. Half the examples carry the seed's question, half vqrl's
    default; without thinking the target is the bare answer and the prompt asks for no reasoning."""
    import hashlib

    from vqrl.training.warmup import SEED_QUESTION

    examples = FormatExamples(4, seed=0)
    assert len(examples) == 4 and len(FormatExamples(7, seed=0).as_dataset()) == 7
    rows = [examples[i] for i in range(4)]
    assert [hashlib.sha256(r["images"][0].tobytes()).hexdigest()[:16] for r in rows] == [
        "af51ae38cd9c1eb3", "0f1aad87d237a46f", "55d87c8008137d34", "a9d86da79be48f29"]
    assert [r["completion"][0]["content"][0]["text"] for r in rows] == [
        f"<think>I look at the image.</think><answer>Score: {s}</answer>" for s in ("1.87", "2.56", "3.72", "3.87")]
    assert [SEED_QUESTION in json.dumps(r["prompt"]) for r in rows] == [False, True, False, True]
    bare = FormatExamples(2, seed=0, think=False)[1]
    assert bare["completion"][0]["content"][0]["text"] == "<answer>Score: 2.56</answer>"
    assert "with no reasoning" in json.dumps(bare["prompt"]) and "with no reasoning" not in json.dumps(rows[1]["prompt"])
    assert hashlib.sha256(bare["images"][0].tobytes()).hexdigest()[:16] == "0f1aad87d237a46f"
