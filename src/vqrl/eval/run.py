"""`vqrl eval`: score a model on quality datasets and report SRCC/PLCC/KRCC/RMSE per dataset, with plots.

Predictions are appended to predictions.csv as they come (predictions.py), so an interrupted evaluation resumes where
it stopped, under the same model and settings only; metrics are always recomputed from that file for the records of
this run, never accumulated in memory. One unreadable file costs its record (counted), not the evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter, defaultdict

from tqdm import tqdm

from ..data.checks import check_media, setup_failure
from ..data.dataset import MediaLoader
from ..data.prompts import build_messages
from ..data.records import TASK_TYPES, to_float
from ..modeling import vision as V
from ..modeling import grouped_decode, vision_windows
from ..rewards.parsing import thought_of
from . import inference
from . import predictions as store
from .metrics import compute_metrics
from .predictions import EvalError
from .records import EvalData, load_eval_records, read_eval_data, refuse_duplicate_ids, refuse_stale_rows
from .settings import apply_model_settings, check_args, eval_settings, prompt_config, vision_spec

__all__ = ["evaluate", "summarize", "score_records", "load_eval_records", "read_predictions", "add_arguments", "run"]

def read_predictions(path: str) -> dict[str, dict]:
    """The rows of a predictions.csv by sample_id (cut-off or invalid rows left out)."""
    return store.read(path)[0]


def _row(rec: dict, score: float | None, text: str, error: str = "") -> dict:
    kind = TASK_TYPES[rec["type"]][0]
    return {"sample_id": rec["sample_id"], "dataset": rec["dataset"], "path": rec.get(kind),
            "mos": to_float(rec["solution"]), "prediction": "" if score is None else f"{score:.6f}",
            "completion": text, "error": error}


def _media_or_error(loader, rec) -> tuple[list | None, str]:
    try:
        return loader.parts(rec), ""
    except Exception as exc:  # noqa: BLE001 - any decoder error costs this record, not the evaluation
        return None, f"unreadable media: {type(exc).__name__}: {exc}"


def _score_batch(model, processor, batch, loader, prompt_cfg, args) -> list[tuple[float | None, str]]:
    """(score, first completion) per record of the batch; raises when a record's media cannot be read."""
    return _score_decoded(model, processor, batch, [loader.parts(r) for r in batch], prompt_cfg, args)


def score_records(model, processor, batch, loader, prompt_cfg, args) -> list[tuple[float | None, str, str]]:
    """(score, first completion, error) per record; a record whose media cannot be read gets its error."""
    media = [_media_or_error(loader, r) for r in batch]
    ok = [i for i, (parts, _) in enumerate(media) if parts is not None]
    out: list[tuple[float | None, str, str]] = [(None, "", err) for _, err in media]
    if ok:
        scored = _score_decoded(model, processor, [batch[i] for i in ok], [media[i][0] for i in ok], prompt_cfg, args)
        for i, result in zip(ok, scored, strict=True):
            out[i] = (*result, "")
    return out


def _score_decoded(model, processor, batch, media, prompt_cfg, args) -> list[tuple[float | None, str]]:
    encoded = [V.encode_prompt(processor, build_messages(r, parts, prompt_cfg)) for r, parts in zip(batch, media)]
    ids, visions = [e[0] for e in encoded], [e[1] for e in encoded]
    tok = processor.tokenizer
    if args.mode == "expected":
        thoughts = None
        if prompt_cfg.think:  # let the model think greedily, then read the score digit after "<answer>Score: "
            gen = inference.generate(model, processor, ids, visions, args.max_new_tokens, do_sample=False)
            thoughts = [tok.encode(thought_of(tok.decode(g, skip_special_tokens=True)), add_special_tokens=False)
                        for g in gen]  # cut as Refine's PD cuts it
        scores = inference.expected_scores(model, processor, ids, visions, thoughts)
        return [(s, "") for s in scores]
    k = args.num_samples if args.mode == "sample" else 1
    gen = inference.generate(model, processor, ids, visions, args.max_new_tokens, do_sample=args.mode == "sample",
                             temperature=args.temperature, num_return_sequences=k)
    return [inference.mean_score([tok.decode(g, skip_special_tokens=True) for g in gen[i * k:(i + 1) * k]])
            for i in range(len(batch))]


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


def summarize(pred_path: str, out_dir: str, quiet: bool = False, records: list[dict] | None = None,
              skipped: Counter | None = None) -> dict:
    """Metrics per dataset and overall from predictions.csv (only the rows of `records` when given: rows of other
    runs in the same file never count); writes metrics.json and one scatter PNG per dataset.

    n counts the records scored (parse failures included); n_unreadable the records whose media could not be
    read, and n_skipped those with a data problem (both left out of every statistic)."""
    rows, _ = store.read(pred_path)
    if records is not None:
        rows = {r["sample_id"]: rows[r["sample_id"]] for r in records if r["sample_id"] in rows}
    skipped = skipped or Counter()
    groups = defaultdict(list)
    for r in rows.values():
        groups[r["dataset"]].append(r)
    for name in skipped:
        groups.setdefault(name, [])
    if len(groups) > 1:
        groups["overall"] = list(rows.values())
    metrics = {}
    for name, group in groups.items():
        scored = [r for r in group if not r["error"]]
        mos = [float(r["mos"]) for r in scored]
        pred = [float(r["prediction"]) if r["prediction"] != "" else math.nan for r in scored]
        metrics[name] = compute_metrics(mos, pred)
        metrics[name]["n_unreadable"] = len(group) - len(scored)
        metrics[name]["n_skipped"] = sum(skipped.values()) if name == "overall" else skipped.get(name, 0)
        scatter(scored, name, os.path.join(out_dir, f"scatter_{name.replace('/', '_')}.png"))
    store.write_atomic(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    if not quiet:
        keys = ["n", "srcc", "plcc", "krcc", "rmse", "parse_fail_rate", "n_unreadable", "n_skipped"]
        print(f"{'dataset':<20}" + "".join(f"{k:>16}" for k in keys))
        for name, m in metrics.items():
            cells = "".join(f"{m.get(k) if not isinstance(m.get(k), float) else round(m[k], 4)!s:>16}" for k in keys)
            print(f"{name:<20}" + cells)
    return metrics


def evaluate(args: argparse.Namespace) -> dict:
    print(f"vqrl eval: {apply_model_settings(args)}", file=sys.stderr)
    check_args(args)
    data = read_eval_data(args.data, args.image_root, args.video_root)
    for p in data.problems:
        print(f"skipped: {p}", file=sys.stderr)
    if data.ignored:
        print(f"ignored {data.ignored} record(s) of other task types (only scoring records are evaluated)",
              file=sys.stderr)
    if not data.records:
        raise EvalError("no scoring records to evaluate")
    refuse_duplicate_ids(data.records)
    os.makedirs(args.out, exist_ok=True)
    pred_path = os.path.join(args.out, store.PREDICTIONS)
    store.claim(args.out, eval_settings(args), overwrite=args.overwrite)
    done, dropped = store.read(pred_path)
    if dropped:
        store.rewrite(pred_path, list(done.values()))
        print(f"repaired {pred_path}: dropped {dropped} cut-off or invalid row(s), to be predicted again",
              file=sys.stderr)
    refuse_stale_rows(done, data.records, pred_path)
    todo = [r for r in data.records if r["sample_id"] not in done or done[r["sample_id"]]["error"]]
    if done:
        print(f"resuming: {len(done)} prediction(s) already in {pred_path}, {len(todo)} to go", file=sys.stderr)
    todo = _check_media_first(todo, data, pred_path, args)
    if todo:
        if args.backend == "vllm":
            from .vllm_backend import score_with_vllm

            results = score_with_vllm(args, todo)
            store.append(pred_path, [_row(r, *res) for r, res in zip(todo, results, strict=True)])
        else:
            _evaluate_hf(args, todo, pred_path)
    return summarize(pred_path, args.out, records=data.records, skipped=data.skipped)


def _check_media_first(todo: list[dict], data: EvalData, pred_path: str, args) -> list[dict]:
    """Decode every file to evaluate before the model loads; unreadable ones become error rows (retried on the next
    run). Stops when the failures say the setup is wrong (every image, or most records, unreadable)."""
    found = check_media(todo, progress=sys.stderr.isatty() or args.progress, desc="checking media")
    if not found:
        return todo
    for i, reasons in found.items():
        rec = todo[i]
        data.reasons[rec["_pos"]] = reasons
        data.per_file[rec["_file"]][1] -= 1
        print(f"unreadable: {rec['_file']}:{rec['_index']}: {'; '.join(reasons)}", file=sys.stderr)
    why = setup_failure(data.every, data.reasons, {k: tuple(v) for k, v in data.per_file.items() if v[0]})
    if why:
        raise EvalError(f"the data setup looks wrong, not a few bad files: {why}")
    store.append(pred_path, [_row(todo[i], None, "", "; ".join(r)) for i, r in found.items()])
    return [r for i, r in enumerate(todo) if i not in found]


def _evaluate_hf(args, todo, pred_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else "auto"
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, use_safetensors=True,
                                                        attn_implementation="sdpa")
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    vision_windows.install(model)  # the vision tower's attention in one call per window length (same attention)
    grouped_decode.install(model)  # decode steps read the grouped-query KV cache without copying it per head
    processor = AutoProcessor.from_pretrained(args.model, padding_side="left")
    loader = MediaLoader(vision_spec(processor, args), None, None, cache_size=8)  # records carry anchored paths
    prompt_cfg = prompt_config(args)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    failed = 0
    for start in tqdm(range(0, len(todo), args.batch_size), desc="evaluating", unit="batch",
                      disable=not sys.stderr.isatty() and not args.progress):
        batch = todo[start:start + args.batch_size]
        results = score_records(model, processor, batch, loader, prompt_cfg, args)
        for rec, (_, _, error) in zip(batch, results):
            if error:
                failed += 1
                print(f"unreadable: {rec['_file']}:{rec['_index']}: {error}", file=sys.stderr)
        store.append(pred_path, [_row(r, *res) for r, res in zip(batch, results, strict=True)])
    if failed:
        print(f"{failed} record(s) could not be read during evaluation; they are counted as n_unreadable and "
              "retried on the next run", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (e.g. outputs/run/final) or hub id")
    parser.add_argument("--data", nargs="+", required=True, help="data files; one dataset per file unless records "
                                                                 "carry a `dataset` field")
    parser.add_argument("--image_root", nargs="+", default=None, help="one root, or one per data file")
    parser.add_argument("--video_root", nargs="+", default=None, help="one root, or one per data file")
    parser.add_argument("--mode", choices=["sample", "greedy", "expected"], default="greedy")
    parser.add_argument("--num_samples", type=int, default=8, help="K for --mode sample")
    parser.add_argument("--temperature", type=float, default=1.0)
    # Prompt and vision settings: unset ones come from the model's vqrl_settings.json (what it was trained with),
    # else the training defaults; `vqrl eval` prints where each value came from.
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--think", dest="think", action="store_const", const=True, default=None,
                       help="think mode (default: as trained, else on)")
    group.add_argument("--no_think", dest="think", action="store_const", const=False)
    parser.add_argument("--system_prompt", default=None, help="system turn (default: as trained; '' for none)")
    parser.add_argument("--use_record_question", type=_bool, default=None, metavar="true|false",
                        help="ask each record's own `question` (default: as trained, else true)")
    parser.add_argument("--min_pixels", type=int, default=None, help="image min pixels (default: as trained)")
    parser.add_argument("--max_pixels", type=int, default=None, help="image max pixels (default: as trained)")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_model_len", type=int, default=None, help="vLLM context (default: the model's)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--video_fps", type=float, default=None, help="default: as trained, else 2")
    parser.add_argument("--video_max_frames", type=int, default=None, help="default: as trained, else 16")
    parser.add_argument("--video_max_pixels", type=int, default=None, help="per-frame pixel cap (default: as trained)")
    parser.add_argument("--video_total_pixels", type=int, default=None,
                        help="pixel budget over all frames of a video (default: as trained)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    parser.add_argument("--out", required=True, help="folder for predictions.csv, metrics.json and plots; an "
                                                     "existing one resumes if made with the same model and settings")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the predictions already in --out (e.g. made with another model) and start over")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def run(args: argparse.Namespace) -> int:
    try:
        evaluate(args)
    except EvalError as exc:
        print(f"vqrl eval: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno is not None and exc.errno in (28, 122):  # ENOSPC, EDQUOT wherever they come from
            print(f"vqrl eval: error: {store.disk_error(exc, exc.filename or args.out)}", file=sys.stderr)
            return 2
        raise
    return 0
