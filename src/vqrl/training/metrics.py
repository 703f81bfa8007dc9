"""Training logs: a JSONL of every logged step (each step exactly once, even across restarts) and the curve PNGs.

TensorBoard logging is the Trainer's own (`report_to`); this module adds the file a watchdog-resumed run needs and
the per-rank step time / GPU memory rows.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch
from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"
RESOURCES_FILE = "resources_rank{rank}.jsonl"


def read_metrics(path: str) -> list[dict]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
    return rows


class MetricsLogger(TrainerCallback):
    """Appends each log to metrics.jsonl; on (re)start drops rows past the resumed step, so redone steps replace
    the lost ones instead of appearing twice. Draws reward/length curves at the end."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, METRICS_FILE)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            keep_steps_up_to(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_curves(self.path, os.path.join(os.path.dirname(self.path), "curves.png"))


def keep_steps_up_to(path: str, step: int) -> None:
    """Drop the rows of steps after `step` (a resumed run redoes them), atomically, keeping the others in order."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


class ResourceLogger(TrainerCallback):
    """Per rank, per step: wall time of the step and this GPU's peak memory (allocated and reserved, GB).

    Every rank writes its own `resources_rank<R>.jsonl` (no collective, so a slow or dying rank cannot block it):
    memory per GPU differs under ZeRO-3 and with mixed image/video batches, and that is what a user sizing a run
    needs to see. Peaks are reset after each step, so each row is that step's own peak. Like metrics.jsonl, a
    resumed run first drops its rows past the resumed step: each step appears once.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self._t0 = None

    def _path(self, args) -> str:
        return os.path.join(self.output_dir, RESOURCES_FILE.format(rank=args.process_index))

    def on_train_begin(self, args, state, control, **kwargs):
        keep_steps_up_to(self._path(args), state.global_step)

    def _cuda(self):
        return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is None:
            return
        row = {"step": state.global_step, "step_seconds": round(time.perf_counter() - self._t0, 3),
               "time": round(time.time(), 3)}
        cuda = self._cuda()
        if cuda is not None:
            row.update(gpu=cuda.current_device(), peak_allocated_gb=round(cuda.max_memory_allocated() / 2**30, 2),
                       peak_reserved_gb=round(cuda.max_memory_reserved() / 2**30, 2))
            cuda.reset_peak_memory_stats()
        with open(self._path(args), "a") as f:
            f.write(json.dumps(row) + "\n")


def plot_curves(metrics_path: str, out_png: str) -> str | None:
    """Reward (total and per function) and completion length against step, one PNG."""
    rows = [r for r in read_metrics(metrics_path) if "reward" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, [r["reward"] for r in rows], label="reward (weighted sum)", linewidth=2)
    for key in sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax1.plot(steps, [r.get(key, math.nan) for r in rows], label=key.split("/")[1], alpha=0.8)
    ax1.set(xlabel="step", ylabel="reward", title="Rewards")
    ax1.legend(fontsize=8)
    for key, label in (("completions/mean_length", "mean"), ("completions/max_length", "max"),
                       ("completions/min_length", "min")):
        if any(key in r for r in rows):
            ax2.plot(steps, [r.get(key, math.nan) for r in rows], label=label)
    ax2.set(xlabel="step", ylabel="tokens", title="Completion length")
    ax2.legend(fontsize=8)
    fig.tight_layout()  # pragma: no mutate (plot styling: the panels' spacing)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
