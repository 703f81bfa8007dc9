"""Wall time per optimizer step of any GRPOTrainer (plain TRL or ours), split into generation, vLLM weight sync,
no-grad log-prob passes, PD passes and the rest, by wrapping the same TRL methods on every trainer so the split is
comparable. Used by `vqrl bench` and the learning check (where a step's time goes decides what to speed up).

Each phase boundary synchronises the GPU: the figures are exact, at the cost of a few syncs per step.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch

PHASES = ("generate", "weight_sync", "logprobs_nograd", "pd")
def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer:
    """Wall time per optimizer step, split into generation, vLLM weight sync, no-grad log-prob passes, PD passes and
    the rest; `between` is the time since the previous step ended (data loading, logging, evaluation callbacks).
    A phase inside another (weight sync inside generation) is counted in its own column only."""

    def __init__(self):
        self.steps: list[dict] = []
        self.current: dict | None = None
        self._open: list[str] = []
        self._last_end: float | None = None

    def begin(self):
        _sync()
        now = time.perf_counter()
        # time since the previous step ended: data loading, logging, callbacks that run after this timer's end
        between = now - self._last_end if self._last_end is not None else 0.0
        self.current = {p: 0.0 for p in PHASES} | {"start": now, "between": between}

    def end(self):
        _sync()
        c = self.current
        c["step"] = time.perf_counter() - c.pop("start")
        c["backward_optimizer_other"] = c["step"] - sum(c[p] for p in PHASES)
        self.steps.append(c)
        self._last_end = time.perf_counter()
        self.current = None

    @contextmanager
    def phase(self, name):
        if self.current is None:
            yield
            return
        _sync()
        t = time.perf_counter()
        self._open.append(name)
        try:
            yield
        finally:
            _sync()
            self._open.pop()
            elapsed = time.perf_counter() - t
            self.current[name] += elapsed
            if self._open:
                self.current[self._open[-1]] -= elapsed


def instrument(trainer, timer: StepTimer) -> None:
    """Wrap the same TRL methods on any GRPOTrainer (plain or ours) so the split is comparable."""
    from transformers import TrainerCallback

    gen = trainer._generate_single_turn
    logps = trainer._get_per_token_logps_and_entropies

    def timed_gen(*a, **k):
        with timer.phase("generate"):
            return gen(*a, **k)

    def timed_logps(*a, **k):
        if torch.is_grad_enabled():
            return logps(*a, **k)
        with timer.phase("logprobs_nograd"):
            return logps(*a, **k)

    trainer._generate_single_turn = timed_gen
    trainer._get_per_token_logps_and_entropies = timed_logps
    if getattr(trainer, "use_vllm", False):
        sync = trainer.vllm_generation.sync_weights

        def timed_sync(*a, **k):
            with timer.phase("weight_sync"):
                return sync(*a, **k)

        trainer.vllm_generation.sync_weights = timed_sync
    if hasattr(trainer, "_forward_probs"):
        pd = trainer._forward_probs

        def timed_pd(*a, **k):
            with timer.phase("pd"):
                return pd(*a, **k)

        trainer._forward_probs = timed_pd

    class Cb(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.begin()

        def on_step_end(self, *a, **k):
            timer.end()

    trainer.add_callback(Cb())


def profile_step(trainer, step: int, path: str, rows: int = 40) -> None:
    """Record torch.profiler over optimizer step `step` (1-based) and write the operators that cost most, by device
    time (on a GPU) and by host time, to `path`: where a step's time goes below the phase split (launch-bound
    decoding, recomputation, optimizer kernels, host syncs)."""
    from transformers import TrainerCallback

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class Profiled(TrainerCallback):
        profiler = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == step:
                _sync()
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is None:
                return
            _sync()
            self.profiler.__exit__(None, None, None)
            averages = self.profiler.key_averages()
            self.profiler = None
            parts = [f"torch.profiler over optimizer step {step} ({', '.join(a.name for a in activities)})"]
            if torch.cuda.is_available():
                parts += ["", "## by device time (self)", averages.table(sort_by="self_device_time_total",
                                                                         row_limit=rows)]
            parts += ["", "## by host time (self)", averages.table(sort_by="self_cpu_time_total", row_limit=rows)]
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write("\n".join(parts) + "\n")

    trainer.add_callback(Profiled())
