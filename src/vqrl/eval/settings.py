"""What an evaluation's predictions depend on (settings.json), and the command-line checks made before anything
is read or loaded.

It decides whether `vqrl eval` may start and what a resume must match; it never runs a model.
"""

from __future__ import annotations

import argparse
import glob
import os

from ..data.media import VisionSpec
from .predictions import EvalError


def model_fingerprint(model: str) -> dict:
    """What identifies the model: its folder, and the size and time of each weight file (`model_files`: a retrained
    model in the same folder is another model), or the hub id as given."""
    if not os.path.isdir(model):
        return {"model": model}
    files = sorted(glob.glob(os.path.join(model, "*.safetensors")) + glob.glob(os.path.join(model, "config.json")))
    return {"model": os.path.abspath(model),
            "model_files": {os.path.basename(f): [os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files}}


def eval_settings(args: argparse.Namespace) -> dict:
    """Every setting that changes a prediction (batch size, device and progress do not)."""
    out = {**model_fingerprint(args.model), "mode": args.mode, "think": args.think, "backend": args.backend,
           "max_new_tokens": args.max_new_tokens, "video_fps": args.video_fps,
           "video_max_frames": args.video_max_frames, "dtype": args.dtype, "seed": args.seed}
    if args.mode == "sample":
        out.update(num_samples=args.num_samples, temperature=args.temperature)
    if args.backend == "vllm":
        out["max_model_len"] = args.max_model_len
    return out


def check_args(args: argparse.Namespace) -> None:
    """Refuse what would fail after the model loads, or silently change the run, before anything is read."""
    for name in ("batch_size", "num_samples", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.backend == "vllm" and args.mode == "expected" and args.think:
        raise EvalError("--backend vllm --mode expected supports --no_think only; use the hf backend")
    try:
        VisionSpec(video_fps=args.video_fps, video_max_frames=args.video_max_frames)
    except ValueError as exc:
        raise EvalError(str(exc).replace("video_", "--video_", 1)) from None
    model = args.model
    looks_local = os.path.isabs(model) or model.startswith(".") or os.path.exists(model) or model.count("/") > 1
    if looks_local:
        if not os.path.isdir(model):
            raise EvalError(f"--model {model}: no such folder")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise EvalError(f"--model {model}: no config.json in the folder (not a saved model?)")
        if not glob.glob(os.path.join(model, "*.safetensors")):
            raise EvalError(f"--model {model}: no *.safetensors weights in the folder")
    else:  # a hub id: its config must be reachable (cache or network) before anything else is done
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EvalError(f"--model {model}: no such folder, and not loadable as a hub model ({first})") from None
