#!/usr/bin/env python
"""Vision-once and compiled generation under DeepSpeed ZeRO-3 on GPUs: do they train exactly as the plain path?

Two short runs of the standard trainer through the user's entry point (`accelerate launch` with
configs/accelerate/zero3.yaml, `python -m vqrl.grpo`), same model, data, seed and float32 weights, one with
`--vision_once true --compiled_generation true`, one with both false. A mixed data file (images and a video) puts
both modalities in every step (and, on 2+ GPUs, different modalities on different ranks); each run's log must say
that its paths ran as asked. The first step's completions come from the same weights and seed, so its logged loss,
grad norm, reward and completion length must agree; the second step's then say the updates agreed too. The optimizer is plain SGD (lr 1): Adam moves every parameter
by ~lr whatever its gradient's size, so float noise in a near-zero gradient becomes a full-size update of either sign,
and step 2 would compare that noise (measured with Adam at lr 1e-3: step 1 equal, step-2 KL 1 % apart). Writes <out>/zero3_equivalence.json; exits 1 on a mismatch.

    python scripts/zero3_equivalence_check.py --out /tmp/z3eq [--nproc 2]      # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from vqrl.training.metrics import read_metrics  # noqa: E402

COMPARED = ("loss", "grad_norm", "reward", "completions/mean_length")
# Reported, not compared: TRL logs KL as the mean of its micro-batches' means, so it moves with how a step's sequences
# are split into micro-batches (vision-once keeps each prompt's group in one); the loss uses the step's token total.
REPORTED = ("kl",)
RECORDS = [{"image": "images/astronaut.jpg", "solution": 4.2, "type": "scoring_image"},
           {"video": "videos/rocket_pan_l0.mp4", "solution": 3.1, "type": "scoring_video"},
           {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.7, "type": "scoring_image"},
           {"image": "images/camera.jpg", "solution": 3.9, "type": "scoring_image"}]


def length_reward(completions, **kwargs):
    """A reward every completion earns differently (the tiny random model never writes the answer format, so the
    product's rewards are all 0, advantages vanish and there is no gradient to compare)."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [min(len(t), 200) / 200 for t in texts]


def run(out: Path, model: str, nproc: int, fast: bool, steps: int) -> list[dict]:
    name = "fast" if fast else "plain"
    data = out / "data.json"
    flag = "true" if fast else "false"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/zero3.yaml"), "--deepspeed_config_file",
           str(ROOT / "configs/deepspeed/zero3.json"), "--num_processes", str(nproc), "-m", "vqrl.grpo",
           "--model_name_or_path", model, "--data_files", str(data), "--image_root", str(ROOT / "examples"),
           "--video_root", str(ROOT / "examples"), "--output_dir", str(out / name), "--max_steps", str(steps),
           "--num_generations", "4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps",
           str(max(1, len(RECORDS) // nproc)), "--max_completion_length", "24", "--optim", "sgd", "--learning_rate", "1.0",
           "--bf16", "false", "--gradient_checkpointing", "true", "--freeze_vision_tower", "false",
           "--beta", "0.04", "--seed", "0", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
           "--heartbeat", "false", "--vision_once", flag, "--compiled_generation", flag,
           "--reward_funcs", "zero3_equivalence_check:length_reward"]
    with open(out / f"{name}.log", "w") as log:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), str(ROOT / "src"),
                                                              os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {name} run failed (exit {proc.returncode}); see {out / name}.log")
    log = (out / f"{name}.log").read_text()
    ran = {"vision-once": "vision-once on" in log, "compiled generation": "compiled generation on" in log}
    if any(on != fast for on in ran.values()):  # else the comparison would compare a path with itself
        raise SystemExit(f"the {name} run did not run what it asked for: {ran} (see {out / name}.log)")
    return [r for r in read_metrics(str(out / name / "metrics.jsonl")) if "loss" in r]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "outputs" / "zero3_equivalence"))
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rtol", type=float, default=1e-3)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(RECORDS))
    model = str(out / "model")
    if not (Path(model) / "config.json").exists():
        subprocess.run([sys.executable, "-m", "vqrl.cli", "tiny-model", "--arch", "qwen2_5_vl", "--out", model],
                       cwd=ROOT, check=True)
    rows = {fast: run(out, model, a.nproc, fast, a.steps) for fast in (True, False)}
    report, ok = {"nproc": a.nproc, "rtol": a.rtol, "steps": []}, True
    for fast_row, plain_row in zip(rows[True], rows[False]):
        step = {"step": fast_row["step"]}
        for key in COMPARED + REPORTED:
            if key in fast_row and key in plain_row:
                x, y = fast_row[key], plain_row[key]
                same = abs(x - y) <= a.rtol * max(abs(x), abs(y), 1e-8)
                step[key] = {"fast": x, "plain": y, "same": same}
                ok &= same or key in REPORTED
        report["steps"].append(step)
    report["equal"] = ok and len(rows[True]) == len(rows[False]) == a.steps
    (out / "zero3_equivalence.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
