"""Trivial quality predictors for the learning check: one image statistic each, its direction fitted on train data.

A learned model proves something only if it beats these on the same held-out records. They must read only the
image pixels and the train split's labels (never the split they are scored on).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _luma(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) @ LUMA


def mean_luminance(y: np.ndarray) -> float:
    return float(y.mean())


def contrast(y: np.ndarray) -> float:
    """RMS contrast: the standard deviation of the luminance."""
    return float(y.std())


def sharpness(y: np.ndarray) -> float:
    """Variance of the Laplacian (the usual focus measure)."""
    return float(ndimage.laplace(y).var())


STATISTICS = {"mean_luminance": mean_luminance, "contrast": contrast, "sharpness": sharpness}


def statistics(paths: list[str | Path]) -> dict[str, list[float]]:
    """Every statistic of every image, in order."""
    lumas = [_luma(p) for p in paths]
    return {name: [fn(y) for y in lumas] for name, fn in STATISTICS.items()}


def srcc(x, y) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    value = spearmanr(x, y).statistic
    return 0.0 if math.isnan(value) else float(value)


def fit_and_score(train: tuple[dict, list[float]], splits: dict[str, tuple[dict, list[float]]]) -> dict:
    """For each statistic: the direction (+1/-1) that ranks the TRAIN records best, then the SRCC of that signed
    statistic on each split. `best` is the statistic whose fixed-sign SRCC is highest on each split (the strictest
    bar for a learned model: picking the best on the scored split can only flatter the baseline).

    Also, as a diagnostic (`two_sided`): -|statistic - c| with c the train quantile that ranks the train records
    best, i.e. "distance from the typical pristine value"; distortions in both directions defeat the signed
    statistic but not this one, unless no single statistic covers all the families."""
    train_stats, train_mos = train
    out: dict = {"baselines": {}, "two_sided": {}}
    for name in STATISTICS:
        r_train = srcc(train_stats[name], train_mos)
        sign = 1.0 if r_train >= 0 else -1.0
        row = {"sign": sign, "train": sign * r_train}
        for split, (stats, mos) in splits.items():
            row[split] = srcc([sign * v for v in stats[name]], mos)
        out["baselines"][name] = row
        centres = np.quantile(train_stats[name], np.linspace(0.05, 0.95, 19))
        fits = [(srcc([-abs(v - c) for v in train_stats[name]], train_mos), float(c)) for c in centres]
        r_fit, centre = max(fits)
        two = {"centre": centre, "train": r_fit}
        for split, (stats, mos) in splits.items():
            two[split] = srcc([-abs(v - centre) for v in stats[name]], mos)
        out["two_sided"][name] = two
    for split in splits:
        name = max(STATISTICS, key=lambda n: out["baselines"][n][split])
        out[f"best_{split}"] = {"name": name, "srcc": out["baselines"][name][split]}
        name = max(STATISTICS, key=lambda n: out["two_sided"][n][split])
        out[f"best_two_sided_{split}"] = {"name": name, "srcc": out["two_sided"][name][split]}
    return out
