"""What an evaluation's predictions depend on (settings.json), the prompt and vision settings it runs under (the
model's own, from training, unless a flag says otherwise), and the command-line checks made before anything is read
or loaded.

It decides whether `vqrl eval` may start and what a resume must match; it never runs a model.
"""

from __future__ import annotations

import argparse
import glob
import os

from ..data.media import VisionSpec
from ..data.prompts import PromptConfig
from ..modeling.vision import set_pixel_budgets
from ..training import saved_settings
from .predictions import EvalError


def apply_model_settings(args: argparse.Namespace) -> str:
    """Fill each prompt and vision setting left unset on the command line with the model's (its vqrl_settings.json,
    written by training), else the default; return one line saying which value came from where."""
    saved = None
    if os.path.isdir(args.model):
        try:
            saved = saved_settings.read(args.model)
        except ValueError as exc:
            raise EvalError(str(exc)) from None
    sources: dict[str, list[str]] = {"flags": [], "model": [], "defaults": []}
    for key, default in saved_settings.DEFAULTS.items():
        if getattr(args, key, None) is not None:
            source = "flags"
        elif saved is not None and key in saved:
            setattr(args, key, saved[key])
            source = "model"
        else:
            setattr(args, key, default)
            source = "defaults"
        sources[source].append(f"{key}={getattr(args, key)!r}")
    where = os.path.join(args.model, saved_settings.FILENAME) if saved is not None else None
    parts = [f"from {where}: {', '.join(sources['model'])}" if sources["model"] else
             ("no vqrl_settings.json with the model" if where is None else ""),
             f"from flags: {', '.join(sources['flags'])}" if sources["flags"] else "",
             f"defaults: {', '.join(sources['defaults'])}" if sources["defaults"] else ""]
    return "prompt and vision settings " + "; ".join(p for p in parts if p)


def prompt_config(args: argparse.Namespace) -> PromptConfig:
    return PromptConfig(think=args.think, system_prompt=args.system_prompt or None,
                        use_record_question=args.use_record_question)


def vision_spec(processor, args: argparse.Namespace) -> VisionSpec:
    """The pixel budgets set on the processor (as training sets them) and the VisionSpec that sizes media alike."""
    set_pixel_budgets(processor, args.min_pixels, args.max_pixels, args.video_max_pixels)
    return VisionSpec.for_processor(processor, video_fps=args.video_fps, video_max_frames=args.video_max_frames,
                                    video_max_pixels=args.video_max_pixels, video_total_pixels=args.video_total_pixels)


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
    # the other prompt and vision settings, where they say something (older settings.json files lack them)
    out.update({key: getattr(args, key) for key in ("system_prompt", "min_pixels", "max_pixels", "video_max_pixels",
                                                    "video_total_pixels") if getattr(args, key, None) is not None})
    if getattr(args, "use_record_question", True) is False:
        out["use_record_question"] = False
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
    budgets = {key: getattr(args, key) for key in ("min_pixels", "max_pixels", "video_max_pixels",
                                                   "video_total_pixels") if getattr(args, key, None) is not None}
    for key, value in budgets.items():
        if value < 1:
            raise EvalError(f"--{key} must be a positive number of pixels, got {value}")
    try:
        VisionSpec(video_fps=args.video_fps, video_max_frames=args.video_max_frames,
                   **{k: v for k, v in budgets.items() if k in ("video_total_pixels",)})
    except ValueError as exc:
        raise EvalError(str(exc).replace("video_", "--video_", 1)) from None
    if budgets.get("min_pixels") and budgets.get("max_pixels") and budgets["max_pixels"] < budgets["min_pixels"]:
        raise EvalError(f"--max_pixels {budgets['max_pixels']} is below --min_pixels {budgets['min_pixels']}")
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
