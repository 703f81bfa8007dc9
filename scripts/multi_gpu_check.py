#!/usr/bin/env python
"""Multi-GPU check: the seed's ZeRO-3 recipe end to end on every GPU of one machine, with a crash in the middle.

What it runs (all through the user-facing entry points, nothing private):
1. `vqrl random-model --shape <shape>`: a random-weight model of a real architecture (default Qwen2.5-VL-7B),
   saved as safetensors so that ZeRO-3 loads it through `from_pretrained` like a real checkpoint.
2. A two-record data file, one image and one video: every step holds two prompts, and TRL's sampler gives each rank
   one prompt's generations, so on 2 GPUs the ranks see DIFFERENT modalities at every step (the deadlock case).
3. `watchdog.py -- bash finetune_RL.sh` with `TRAINER=standard` under `configs/accelerate/zero3.yaml`: a checkpoint
   at step `--save_steps`; a few seconds into the next step one rank is SIGKILLed; the watchdog stops what is left,
   restarts with `--resume auto`, and the run finishes from the checkpoint.
4. `bash finetune_RL.sh` with `TRAINER=refine` for a few steps (PD passes under ZeRO-3, checkpoint at the end).

Writes <out>/multi_gpu_check.json (multi_gpu_check_<run>.json with --runs): per run, the exit code, wall time, the
watchdog's events, the steps in metrics.jsonl, and per rank the step times and peak memory (resources_rank<R>.jsonl).
Exits 1 if a check fails.

    python scripts/multi_gpu_check.py --out /tmp/mgpu            # on a machine with >= 2 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from vqrl.training.checkpoints import complete_checkpoints, is_complete  # noqa: E402
from vqrl.training.metrics import read_metrics  # noqa: E402

IMAGE = "images/astronaut.jpg"
VIDEO = "videos/rocket_pan_l0.mp4"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "outputs" / "multi_gpu_check"))
    p.add_argument("--shape", default="qwen2_5_vl_7b")
    p.add_argument("--model", help="use this model folder instead of building a random one")
    p.add_argument("--runs", choices=["all", "standard", "refine"], default="all",
                   help="which runs (one call per run keeps each under a time limit; results are merged)")
    p.add_argument("--run_root", help="where the run folders go (default: --out). A full-fine-tuning 7B checkpoint "
                                      "is ~115 GB (bf16 weights + fp32 Adam states): pick a disk that holds it")
    p.add_argument("--nproc", default="auto", help="processes (GPUs); auto = all visible")
    p.add_argument("--steps", type=int, default=3, help="standard run: total steps (one checkpoint, at --save_steps)")
    p.add_argument("--save_steps", type=int, default=2, help="standard run: checkpoint every N steps; the kill "
                                                             "comes a few seconds into step N+1")
    p.add_argument("--kill_delay", type=float, default=2.0, help="seconds after the checkpoint before the kill")
    p.add_argument("--refine_steps", type=int, default=2, help="refine run steps (0: skip)")
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--max_completion", type=int, default=64)
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (the seed's; > 0 adds the ZeRO-3 "
                                                             "reference model)")
    p.add_argument("--max_pixels", type=int, default=401408, help="image pixel budget (512 * 28 * 28)")
    p.add_argument("--video_max_frames", type=int, default=8)
    p.add_argument("--video_total_pixels", type=int, default=8 * 200704)
    p.add_argument("--python", default=sys.executable)
    return p.parse_args(argv)


def write_data(out: Path) -> Path:
    q = ("What is your overall rating on the quality of this {}? The rating should be a float between 1 and 5, "
         "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality.")
    records = [{"image": IMAGE, "solution": 4.65, "question": q.format("picture"), "type": "scoring_image"},
               {"video": VIDEO, "solution": 3.8, "question": q.format("video"), "type": "scoring_video"}]
    path = out / "mixed.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def run_env(args, trainer: str, model: str, data: Path, run_dir: Path, steps: int, save_steps: int) -> dict:
    env = dict(os.environ)
    env.update(TRAINER=trainer, MODEL=model, DATA=str(data), IMAGE_ROOT=str(ROOT / "examples"),
               VIDEO_ROOT=str(ROOT / "examples"), OUTPUT=str(run_dir), MAX_STEPS=str(steps),
               SAVE_STEPS=str(save_steps), SAVE_TOTAL_LIMIT="2", NUM_GENERATIONS=str(args.num_generations),
               BATCH=str(args.num_generations), MAX_COMPLETION=str(args.max_completion), LR="1e-6",
               NPROC=str(args.nproc), PYTHON=args.python)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def extra_flags(args) -> list[str]:
    return ["--beta", str(args.beta), "--max_pixels", str(args.max_pixels), "--video_max_frames",
            str(args.video_max_frames), "--video_total_pixels", str(args.video_total_pixels),
            "--report_to", "none", "--seed", "0"]


def rank_workers() -> dict[int, int]:
    """pid of each training worker, by LOCAL_RANK (workers are `-m vqrl.grpo` processes with LOCAL_RANK set)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"vqrl.grpo" not in cmd or any(b"accelerate" in c for c in cmd):
                continue
            env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                       if b"=" in kv)
        except OSError:
            continue
        found[int(env.get(b"LOCAL_RANK", b"0"))] = int(entry)  # no LOCAL_RANK: a single CPU process
    return found


def killer(run_dir: Path, save_steps: int, delay: float, report: dict, stop: threading.Event) -> None:
    """SIGKILL the highest rank `delay` s after checkpoint-<save_steps> is complete (once)."""
    checkpoint = str(run_dir / f"checkpoint-{save_steps}")
    while not stop.is_set() and not is_complete(checkpoint):
        time.sleep(0.5)
    if stop.is_set():
        return
    time.sleep(delay)
    workers = rank_workers()
    if not workers:
        report["kill"] = {"error": "no worker process found"}
        return
    rank = max(workers)
    os.kill(workers[rank], signal.SIGKILL)
    report["kill"] = {"rank": rank, "pid": workers[rank], "time": time.time(),
                      "seconds_after_checkpoint": delay}
    print(f"[multi_gpu_check] SIGKILL rank {rank} (pid {workers[rank]})", flush=True)


def resources(run_dir: Path) -> dict:
    """Per rank: median step time (steps after the first of each attempt) and the largest peak memory."""
    out = {}
    for path in sorted(run_dir.glob("resources_rank*.jsonl")):
        rows = read_metrics(str(path))
        rank = path.stem.removeprefix("resources_rank")
        steady = [r["step_seconds"] for i, r in enumerate(rows) if i and rows[i - 1]["step"] == r["step"] - 1]
        out[rank] = {"steps": [r["step"] for r in rows], "step_seconds": [r["step_seconds"] for r in rows],
                     "median_step_s": round(statistics.median(steady), 2) if steady else None,
                     "peak_allocated_gb": max((r["peak_allocated_gb"] for r in rows if "peak_allocated_gb" in r),
                                              default=None),  # None without a GPU: no made-up 0 GB
                     "peak_reserved_gb": max((r["peak_reserved_gb"] for r in rows if "peak_reserved_gb" in r),
                                             default=None)}
    return out


def run(cmd: list[str], env: dict, log: Path) -> tuple[int, float]:
    started = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc.returncode, round(time.perf_counter() - started, 1)


def summarise_run(run_dir: Path, code: int, seconds: float, log: Path) -> dict:
    steps = [r["step"] for r in read_metrics(str(run_dir / "metrics.jsonl")) if "reward" in r]
    text = log.read_text(errors="replace")
    return {"exit_code": code, "seconds": seconds, "logged_steps": steps,
            "checkpoints": [os.path.basename(path) for _, path in complete_checkpoints(str(run_dir))],
            "final_model": (run_dir / "final" / "config.json").exists(),
            "resumed_from": [line.split("resuming from", 1)[1].strip() for line in text.splitlines()
                             if "resuming from" in line],
            "resources": resources(run_dir), "log": str(log)}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args), "checks": {}}
    import torch

    report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if args.nproc == "auto":
        args.nproc = str(torch.cuda.device_count())  # 0: finetune_RL.sh's CPU path (a smoke test of this script)
    model = args.model
    if not model:
        model = str(out / f"model_{args.shape}")
        if not (Path(model) / "config.json").exists():
            t = time.perf_counter()
            from vqrl.models.shapes import save_random_model

            save_random_model(args.shape, model)
            torch.cuda.empty_cache()
            report["model_build_s"] = round(time.perf_counter() - t, 1)
    data = write_data(out)
    run_root = Path(args.run_root) if args.run_root else out
    run_root.mkdir(parents=True, exist_ok=True)
    result_path = out / ("multi_gpu_check.json" if args.runs == "all" else f"multi_gpu_check_{args.runs}.json")

    def save():
        result_path.write_text(json.dumps(report, indent=1))

    # standard, under the watchdog, with one rank killed after the checkpoint
    if args.runs in ("all", "standard"):
        standard_run(args, model, data, run_root / "standard", out, report)
        save()
    if args.refine_steps and args.runs in ("all", "refine"):
        refine_run(args, model, data, run_root / "refine", out, report)
        save()
    ok = all(report["checks"].values())
    print(json.dumps(report["checks"], indent=1))
    for name in ("standard", "refine"):
        if name in report:
            for rank, r in report[name]["resources"].items():
                print(f"{name} rank {rank}: median step {r['median_step_s']} s, peak allocated "
                      f"{r['peak_allocated_gb']} GB, reserved {r['peak_reserved_gb']} GB")
    print(f"{'PASS' if ok else 'FAIL'}: wrote {result_path}")
    return 0 if ok else 1


def standard_run(args, model: str, data: Path, run_dir: Path, out: Path, report: dict) -> None:
    env = run_env(args, "standard", model, data, run_dir, args.steps, args.save_steps)
    cmd = [args.python, str(ROOT / "watchdog.py"), "--output_dir", str(run_dir), "--backoff", "5", "--grace", "30",
           "--hang_timeout", "900", "--max_restarts", "2", "--", "bash", str(ROOT / "finetune_RL.sh"),
           *extra_flags(args)]
    stop = threading.Event()
    kill_report: dict = {}
    thread = threading.Thread(target=killer, args=(run_dir, args.save_steps, args.kill_delay, kill_report, stop),
                              daemon=True)
    thread.start()
    code, seconds = run(cmd, env, out / "standard.log")
    stop.set()
    std = summarise_run(run_dir, code, seconds, out / "standard.log")
    std["kill"] = kill_report.get("kill")
    std["watchdog_events"] = [{k: e.get(k) for k in ("event", "attempt", "step", "exit_code")}
                              for e in read_metrics(str(run_dir / "watchdog.jsonl"))]
    report["standard"] = std
    report["checks"].update({
        "standard_exit_0": code == 0,
        "standard_rank_killed": bool(std["kill"] and "rank" in std["kill"]),
        "standard_restarted_by_watchdog": any(e["event"] == "restart" for e in std["watchdog_events"]),
        "standard_resumed_from_checkpoint": any(f"checkpoint-{args.save_steps}" in r for r in std["resumed_from"]),
        "standard_every_step_logged_once": std["logged_steps"] == list(range(1, args.steps + 1)),
        "standard_final_model": std["final_model"],
    })
    for ckpt in run_dir.glob("checkpoint-*"):  # ~115 GB each at 7B: free the space for the next run
        shutil.rmtree(ckpt, ignore_errors=True)


def refine_run(args, model: str, data: Path, run_dir: Path, out: Path, report: dict) -> None:
    """No checkpoint (the standard run showed save and resume); the final model is saved."""
    env = run_env(args, "refine", model, data, run_dir, args.refine_steps, args.refine_steps + 1)
    code, seconds = run(["bash", str(ROOT / "finetune_RL.sh"), *extra_flags(args)], env, out / "refine.log")
    ref = summarise_run(run_dir, code, seconds, out / "refine.log")
    report["refine"] = ref
    report["checks"].update({
        "refine_exit_0": code == 0,
        "refine_every_step_logged_once": ref["logged_steps"] == list(range(1, args.refine_steps + 1)),
        "refine_final_model": ref["final_model"],
    })


if __name__ == "__main__":
    sys.exit(main())
