"""`vqrl eval`: score a model on quality datasets and report SRCC/PLCC/KRCC/RMSE per dataset, with plots.

Predictions are appended to predictions.csv as they come, so an interrupted evaluation resumes where it stopped;
metrics are always recomputed from that file, never accumulated in memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from ..data.media import VisionSpec
from ..data.dataset import MediaLoader
from ..data.prompts import PromptConfig, build_messages
from ..data.records import TASK_TYPES, anchor_paths, check_record, parse_mos, read_records, roots_per_file
from ..rewards.parsing import parse_score
from ..trainers import vision as V
from . import inference
from .metrics import compute_metrics

FIELDS = ["sample_id", "dataset", "path", "mos", "prediction", "completion"]


def load_eval_records(files, image_root, video_root) -> tuple[list[dict], list[str]]:
    """Scoring records of every file, tagged with their dataset (the `dataset` field or the file's stem)."""
    records, problems = [], []
    roots = zip(roots_per_file(image_root, len(files), "image_root"), roots_per_file(video_root, len(files), "video_root"))
    for path, (iroot, vroot) in zip(files, roots):
        result = read_records(path)
        problems += [str(p) for p in result.problems]
        for rec in result.records:
            rec = anchor_paths(rec, iroot, vroot)
            reasons = check_record(rec)
            if reasons:
                problems += [f"{path}:{rec.get('_index')}: {r}" for r in reasons]
                continue
            if TASK_TYPES[rec["type"]][1] != "mos":
                continue
            rec["dataset"] = rec.get("dataset") or Path(path).stem
            records.append(rec)
    return records, problems


def read_predictions(path: str) -> dict[str, dict]:
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {row["sample_id"]: row for row in csv.DictReader(f)}


def _score_batch(model, processor, batch, loader, prompt_cfg, args) -> list[tuple[float | None, str]]:
    encoded = [V.encode_prompt(processor, build_messages(r, loader.parts(r), prompt_cfg)) for r in batch]
    ids, visions = [e[0] for e in encoded], [e[1] for e in encoded]
    tok = processor.tokenizer
    if args.mode == "expected":
        thoughts = None
        if prompt_cfg.think:  # let the model think greedily, then read the score digit after "<answer>Score: "
            gen = inference.generate(model, processor, ids, visions, args.max_new_tokens, do_sample=False)
            thoughts = []
            for g in gen:
                text = tok.decode(g, skip_special_tokens=True)
                thought = text.split("<answer>")[0]
                if "</think>" not in thought:
                    thought += "</think>"
                thoughts.append(tok.encode(thought, add_special_tokens=False))
        scores = inference.expected_scores(model, processor, ids, visions, thoughts)
        return [(s, "") for s in scores]
    k = args.num_samples if args.mode == "sample" else 1
    gen = inference.generate(model, processor, ids, visions, args.max_new_tokens, do_sample=args.mode == "sample",
                             temperature=args.temperature, num_return_sequences=k)
    out = []
    for i in range(len(batch)):
        texts = [tok.decode(g, skip_special_tokens=True) for g in gen[i * k:(i + 1) * k]]
        scores = [s for s in (parse_score(t) for t in texts) if s is not None]
        out.append((sum(scores) / len(scores) if scores else None, texts[0]))
    return out


def scatter(rows: list[dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(float(r["mos"]), float(r["prediction"])) for r in rows if r["prediction"] not in ("", None)]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if pts:
        ax.scatter(*zip(*pts), s=12, alpha=0.7)
    ax.plot([1, 5], [1, 5], color="grey", linewidth=0.8)
    ax.set(xlabel="MOS", ylabel="prediction", title=title, xlim=(0.8, 5.2), ylim=(0.8, 5.2))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(pred_path: str, out_dir: str, quiet: bool = False) -> dict:
    """Metrics per dataset and overall from predictions.csv; writes metrics.json and one scatter PNG per dataset."""
    rows = list(read_predictions(pred_path).values())
    groups = defaultdict(list)
    for r in rows:
        groups[r["dataset"]].append(r)
    if len(groups) > 1:
        groups["overall"] = rows
    metrics = {}
    for name, group in groups.items():
        mos = [float(r["mos"]) for r in group]
        pred = [float(r["prediction"]) if r["prediction"] not in ("", None) else math.nan for r in group]
        metrics[name] = compute_metrics(mos, pred)
        scatter(group, name, os.path.join(out_dir, f"scatter_{name}.png"))
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if not quiet:
        keys = ["n", "srcc", "plcc", "krcc", "rmse", "parse_fail_rate"]
        print(f"{'dataset':<20}" + "".join(f"{k:>16}" for k in keys))
        for name, m in metrics.items():
            cells = "".join(f"{m.get(k) if not isinstance(m.get(k), float) else round(m[k], 4)!s:>16}" for k in keys)
            print(f"{name:<20}" + cells)
    return metrics


def evaluate(args: argparse.Namespace) -> dict:
    os.makedirs(args.out, exist_ok=True)
    records, problems = load_eval_records(args.data, args.image_root, args.video_root)
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    if not records:
        raise SystemExit("vqrl eval: no scoring records to evaluate")
    pred_path = os.path.join(args.out, "predictions.csv")
    done = read_predictions(pred_path)
    todo = [r for r in records if str(r["sample_id"]) not in done]
    if done:
        print(f"resuming: {len(done)} prediction(s) already in {pred_path}, {len(todo)} to go", file=sys.stderr)
    if todo:
        if args.backend == "vllm":
            from .vllm_backend import score_with_vllm

            results = score_with_vllm(args, todo)
            _append(pred_path, todo, results, args)
        else:
            _evaluate_hf(args, todo, pred_path)
    return summarize(pred_path, args.out)


def _append(pred_path, batch, results, args):
    new = not os.path.exists(pred_path)
    with open(pred_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for rec, (score, text) in zip(batch, results, strict=True):
            kind = TASK_TYPES[rec["type"]][0]
            writer.writerow({
                "sample_id": rec["sample_id"], "dataset": rec["dataset"],
                "path": rec.get(kind), "mos": parse_mos(rec["solution"]),
                "prediction": "" if score is None else f"{score:.6f}", "completion": text,
            })
        f.flush()
        os.fsync(f.fileno())


def _evaluate_hf(args, todo, pred_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else "auto"
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, use_safetensors=True,
                                                        attn_implementation="sdpa")
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    processor = AutoProcessor.from_pretrained(args.model, padding_side="left")
    spec = VisionSpec.for_processor(processor, video_fps=args.video_fps, video_max_frames=args.video_max_frames)
    loader = MediaLoader(spec, None, None, cache_size=8)  # records carry anchored paths
    prompt_cfg = PromptConfig(think=args.think)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    for start in tqdm(range(0, len(todo), args.batch_size), desc="evaluating", unit="batch",
                      disable=not sys.stderr.isatty() and not args.progress):
        batch = todo[start:start + args.batch_size]
        _append(pred_path, batch, _score_batch(model, processor, batch, loader, prompt_cfg, args), args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (e.g. outputs/run/final) or hub id")
    parser.add_argument("--data", nargs="+", required=True, help="data files; one dataset per file unless records "
                                                                 "carry a `dataset` field")
    parser.add_argument("--image_root", nargs="+", default=None, help="one root, or one per data file")
    parser.add_argument("--video_root", nargs="+", default=None, help="one root, or one per data file")
    parser.add_argument("--mode", choices=["sample", "greedy", "expected"], default="greedy")
    parser.add_argument("--num_samples", type=int, default=8, help="K for --mode sample")
    parser.add_argument("--temperature", type=float, default=1.0)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--think", dest="think", action="store_true", default=True)
    group.add_argument("--no_think", dest="think", action="store_false")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_model_len", type=int, default=None, help="vLLM context (default: the model's)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--video_fps", type=float, default=2.0)
    parser.add_argument("--video_max_frames", type=int, default=16)
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    parser.add_argument("--out", required=True, help="folder for predictions.csv, metrics.json and plots")


def run(args: argparse.Namespace) -> int:
    evaluate(args)
    return 0
