"""Scoring the learning check's models: a split scored in memory with vqrl's eval code (during training), and the
full `vqrl eval` of a saved model (at the end).

It measures only; it must not change the model's mode or weights (the in-memory scorer restores train mode).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ..data.dataset import MediaLoader
from ..data.media import VisionSpec
from ..data.prompts import PromptConfig
from ..eval.metrics import compute_metrics
from ..eval.run import _score_batch, load_eval_records
from .task import source_of
from .warmup import THINK_TEXT, perception_thought, written_thought

MODES = ("expected", "greedy")
KEYS = ("srcc", "plcc", "krcc", "rmse", "parse_fail_rate")


class SplitScorer:
    """Scores one split's records with vqrl.eval.run's batch scorer (expected score and greedy decoding) for any
    model in memory; also the SRCC within each source scene and the spread of the predictions."""

    def __init__(self, data_file: str | Path, image_root: str | Path, processor, max_new_tokens: int,
                 batch_size: int = 64, limit: int | None = None, perception: bool = False):
        records, problems = load_eval_records([str(data_file)], str(image_root), None)
        if problems:
            raise ValueError(f"{data_file}: records failed their checks: " + "; ".join(problems[:5]))
        if limit and len(records) > limit:  # an even subsample (train-set diagnostics)
            records = records[:: len(records) // limit][:limit]
        self.records, self.processor = records, processor
        self.perception = perception  # score the thoughts against the perception warm-up's (absent otherwise)
        self.loader = MediaLoader(VisionSpec.for_processor(processor), str(image_root), None, cache_size=4096)
        self.prompt_cfg = PromptConfig(think=True)
        self.ns = {mode: argparse.Namespace(mode=mode, num_samples=1, temperature=1.0, batch_size=batch_size,
                                            max_new_tokens=max_new_tokens) for mode in MODES}

    def __call__(self, model) -> dict:
        was_training = model.training
        model.eval()
        out = {}
        try:
            for mode, ns in self.ns.items():
                preds, texts = [], []
                with torch.no_grad():
                    for start in range(0, len(self.records), ns.batch_size):
                        batch = self.records[start:start + ns.batch_size]
                        scored = _score_batch(model, self.processor, batch, self.loader, self.prompt_cfg, ns)
                        preds += [s for s, _ in scored]
                        texts += [t for _, t in scored]
                out[mode] = self._metrics(preds)
                if mode == "greedy":  # is the thinking still the warm-up's fixed sentence? (what PD compares)
                    thoughts = [written_thought(t) for t in texts]
                    out[mode]["think_is_template"] = sum(t == THINK_TEXT for t in thoughts) / max(1, len(thoughts))
                    out[mode]["think_distinct"] = len(set(thoughts))
                    if self.perception:
                        out[mode].update(perception_accuracy(self.records, thoughts))
        finally:
            model.train(was_training)
        return out

    def _metrics(self, preds: list) -> dict:
        mos = [float(r["solution"]) for r in self.records]
        m = compute_metrics(mos, preds)
        out = {k: m[k] for k in KEYS}
        out["pred_std"] = _std([p for p in preds if p is not None])
        within = []
        for key in sorted({source_of(r["sample_id"]) for r in self.records}):
            idx = [i for i, r in enumerate(self.records) if source_of(r["sample_id"]) == key]
            within.append(compute_metrics([mos[i] for i in idx], [preds[i] for i in idx])["srcc"])
        within = [v for v in within if v is not None]
        out["srcc_within"] = sum(within) / len(within) if within else None
        families = sorted({r["distortion"] for r in self.records if r.get("distortion")})
        for family in families:  # one family against the pristine scenes: does the model see this distortion?
            idx = [i for i, r in enumerate(self.records) if r.get("distortion") in (family, None)]
            out[f"srcc_{family}"] = compute_metrics([mos[i] for i in idx], [preds[i] for i in idx])["srcc"]
        return out


def perception_accuracy(records: list[dict], thoughts: list[str | None]) -> dict:
    """After a perception warm-up (`--sft_targets perception`): the share of thoughts that name the record's
    distortion (or none) and the share that also give its level, as the warm-up taught them."""
    family = exact = 0
    for record, thought in zip(records, thoughts, strict=True):
        want = perception_thought(record)
        exact += thought == want
        family += thought is not None and thought.startswith(want.split(",")[0].rstrip("."))
    n = max(1, len(records))
    return {"think_names_distortion": family / n, "think_names_level": exact / n}


def vqrl_eval(model_dir: str | Path, data_file: str | Path, image_root: str | Path, out: str | Path, *,
              device: str, max_new_tokens: int) -> dict:
    """The full `vqrl eval` (reload from disk, predictions.csv, metrics.json, scatter) in both modes."""
    from ..eval.run import add_arguments, evaluate

    result = {}
    name = Path(data_file).stem
    for mode in MODES:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        ns = parser.parse_args(["--model", str(model_dir), "--data", str(data_file), "--image_root", str(image_root),
                                "--mode", mode, "--device", device, "--dtype", "float32",
                                "--max_new_tokens", str(max_new_tokens), "--batch_size", "64",
                                "--out", str(Path(out) / f"{name}_{mode}")])
        m = evaluate(ns)[name]
        result[mode] = {k: m[k] for k in ("srcc", "plcc", "parse_fail_rate")}
    return result


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))
