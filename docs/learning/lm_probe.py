"""Can the learning check's whole model learn its task with clean labels? A supervised reference through the same
path GRPO trains: the tiny Qwen2.5-VL (merger at zero, the vision tower trainable, as the GPU runs train it) is
fine-tuned with TRL's SFTTrainer on the check's answer text with the TRUE MOS as the score
(`<think>I look at the image.</think><answer>Score: 3.40</answer>`), and the held-out split is scored as the check
scores it (expected score over the score tokens, and greedy), per distortion family, every --eval_every steps.

feature_probe.py asks whether the tower's features can rank the images (a small head on pooled tokens); this asks
whether the language model's path to the answer can carry that ranking at all, and how fast. Where it fails on a
family, GRPO (a far noisier signal through the same path) cannot be expected to succeed (docs/learning.md).

    python docs/learning/lm_probe.py --data /tmp/probe_data --data_seed 0 --steps 2000 --out lm_probe.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoProcessor, TrainerCallback

from vqrl.learning.evaluate import SplitScorer
from vqrl.learning.task import TaskSpec, build_or_load_task
from vqrl.learning.warmup import make_model, warmup

FAMILIES = ("darken", "brighten", "gaussian_blur", "gaussian_noise")


class Scores(TrainerCallback):
    """Held-out scores every `every` steps, and (with `train`) the same on a train subsample: a train SRCC far
    above the held-out one says the model memorises scenes rather than learning quality."""

    def __init__(self, scorer: SplitScorer, every: int, points: list, train: SplitScorer | None = None):
        self.scorer, self.train, self.every, self.points = scorer, train, every, points
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            ev = self.scorer(model)
            row = {"step": state.global_step, "seconds": round(time.perf_counter() - self.started)}
            for mode in ("expected", "greedy"):
                row[mode] = round(ev[mode]["srcc"] or 0.0, 3)
            row.update({f: round(ev["expected"].get(f"srcc_{f}") or 0.0, 3) for f in FAMILIES})
            row["pred_std"] = round(ev["expected"]["pred_std"], 3)
            if self.train is not None:
                row["train_expected"] = round(self.train(model)["expected"]["srcc"] or 0.0, 3)
            self.points.append(row)
            print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the task's folder (built here if it has no task.json)")
    p.add_argument("--data_seed", type=int, default=0)
    p.add_argument("--train_sources", type=int, default=1000)
    p.add_argument("--size", type=int, default=112, help="image side in pixels (the check's: 112, 16 image tokens)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000, help="0: build the data folder only")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument("--hidden_size", type=int, default=128, help="the language model's width (the check's: 128)")
    p.add_argument("--layers", type=int, default=2, help="the language model's layers (the check's: 2)")
    p.add_argument("--vision_hidden_size", type=int, default=64)
    p.add_argument("--vision_depth", type=int, default=4)
    p.add_argument("--init", help="start from this saved model (e.g. feature_probe.py --save: a trained tower)")
    p.add_argument("--keep_merger", action="store_true",
                   help="start from the random merger, not one whose output layer is zero (the check's start)")
    p.add_argument("--frozen_tower", action="store_true", help="train the merger only (the check's old setting)")
    p.add_argument("--train_eval", type=int, default=88, help="train records also scored (0: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the curve here (JSON)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = Path(a.data)
    task = build_or_load_task(TaskSpec(train_sources=a.train_sources, size=a.size, seed=a.data_seed), data, a.workers)
    size = task["spec"]["size"]
    if a.steps == 0:
        return
    work = Path(tempfile.mkdtemp())
    path = Path(a.init) if a.init else make_model(
        work / "m", seed=a.seed, max_pixels=size * size, hidden_size=a.hidden_size, layers=a.layers,
        vision_hidden_size=a.vision_hidden_size, vision_depth=a.vision_depth, zero_merger=not a.keep_merger)
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    scorer = SplitScorer(data / "heldout.json", data, processor, 32)
    train = SplitScorer(data / "train.json", data, processor, 32, limit=a.train_eval) if a.train_eval else None
    points: list = []
    _, info = warmup(path, data / "train.json", data, work / "sft", seed=a.seed, steps=a.steps, lr=a.lr,
                     batch=a.batch, targets="mos", see_image=True, train_tower=not a.frozen_tower, device=a.device,
                     callbacks=[Scores(scorer, a.eval_every, points, train)])
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "warmup": info, "heldout": points}, indent=1))


if __name__ == "__main__":
    main()
