"""Runs the learning check's stages as worker processes, at most --parallel at once: every seed's warm-up, and as
soon as one is done, that seed's GRPO runs (all on the same GPU: tiny models use little of it).

A worker that fails costs its own runs only (they are reported missing); workers still running near the end of
--budget are stopped, so the summary is always written. It must not start a worker twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.5
STOP_BEFORE_END = 15  # seconds before the end of --budget at which stragglers are stopped


def worker_command(cfg, stage: str, seed: int, trainer: str | None, deadline: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "vqrl.learning", "--out", str(cfg.out), "--stage", stage, "--seed", str(seed)]
    if trainer:
        cmd += ["--trainer", trainer]
    if deadline is not None:
        cmd += ["--deadline", repr(deadline)]
    return cmd


def run_stages(cfg, deadline: float | None) -> list[dict]:
    """Run every stage; return the failed ones ({stage, seed, trainer, returncode, log})."""
    pending = [("warmup", seed, None) for seed in cfg.seeds]
    running: dict[subprocess.Popen, tuple] = {}
    failures: list[dict] = []
    src = str(Path(__file__).resolve().parents[2])  # workers import this very vqrl, wherever it was imported from
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads or 1), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    hard_stop = cfg.started + cfg.budget - STOP_BEFORE_END if cfg.budget else None
    try:
        while pending or running:
            while pending and len(running) < cfg.parallel:
                stage, seed, trainer = job = pending.pop(0)
                log = Path(cfg.out) / f"seed{seed}" / f"{trainer or stage}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as f:
                    proc = subprocess.Popen(worker_command(cfg, stage, seed, trainer, deadline), stdout=f,
                                            stderr=subprocess.STDOUT, env=env)
                running[proc] = (*job, log, time.time())
                print(f"started seed {seed} {trainer or stage} (pid {proc.pid}, log {log})", flush=True)
            time.sleep(POLL_SECONDS)
            if hard_stop is not None and time.time() > hard_stop:
                for proc, (stage, seed, trainer, log, t0) in running.items():
                    proc.terminate()
                    failures.append(_failure(stage, seed, trainer, "stopped at the end of --budget", log))
                for proc in running:
                    proc.wait()
                for stage, seed, trainer in pending:  # never started: reported, not silently dropped
                    log = Path(cfg.out) / f"seed{seed}" / f"{trainer or stage}.log"
                    failures.append(_failure(stage, seed, trainer, "not started before the end of --budget", log))
                running.clear()
                pending.clear()
                break
            for proc in [p for p in running if p.poll() is not None]:
                stage, seed, trainer, log, t0 = running.pop(proc)
                print(f"finished seed {seed} {trainer or stage}: exit {proc.returncode}, {time.time() - t0:.0f}s",
                      flush=True)
                if proc.returncode != 0:
                    failures.append(_failure(stage, seed, trainer, f"exit {proc.returncode}", log))
                    print(_tail(log), flush=True)
                elif stage == "warmup":  # this seed's GRPO runs go before later seeds' warm-ups
                    pending = [("grpo", seed, t) for t in cfg.trainers] + pending
    finally:
        for proc in running:  # an exception here must not leave workers behind
            proc.terminate()
    return failures


def _failure(stage, seed, trainer, reason, log) -> dict:
    return {"stage": stage, "seed": seed, "trainer": trainer, "reason": reason, "log": str(log)}


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
