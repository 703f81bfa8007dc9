"""Agreement between predicted scores and MOS: SRCC, KRCC, PLCC (raw and after the 4-parameter logistic map), RMSE.

Must not invent numbers: unparsed predictions are dropped and counted, never imputed; undefined stats are None, not NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import numpy as np
from scipy import optimize, special, stats

# Fewest valid pairs for each statistic. A correlation of two points is always +-1 and means nothing, but it is
# defined, so we report it; the logistic fit has 4 parameters and needs strictly more points than that, or it can
# pass through every point and report a perfect PLCC.
MIN_PAIRS_CORR = 2
MIN_PAIRS_LOGISTIC = 5


def valid_pairs(mos, pred) -> tuple[np.ndarray, np.ndarray, int]:
    """(mos, pred, n_dropped) with pairs whose prediction is None / NaN / inf removed.

    A missing prediction is a parse failure of the model, so it is dropped and counted; a missing MOS is a data bug
    and raises instead of silently shrinking the test set.
    """
    mos_arr = np.asarray([math.nan if m is None else m for m in mos], dtype=float).reshape(-1)
    pred_arr = np.asarray([math.nan if p is None else p for p in pred], dtype=float).reshape(-1)
    if mos_arr.shape != pred_arr.shape:
        raise ValueError(f"mos and pred differ in length: {mos_arr.size} vs {pred_arr.size}")
    if not np.all(np.isfinite(mos_arr)):
        bad = int(np.flatnonzero(~np.isfinite(mos_arr))[0])
        raise ValueError(f"MOS must be finite numbers; entry {bad} is {mos_arr[bad]!r}")
    keep = np.isfinite(pred_arr)
    return mos_arr[keep], pred_arr[keep], int((~keep).sum())


def _is_constant(x: np.ndarray) -> bool:
    return x.size > 0 and bool(np.all(x == x[0]))


def _correlation(fn, mos, pred) -> float | None:
    """None below MIN_PAIRS_CORR; 0.0 when either side is constant (no ordering information, so no agreement)."""
    m, p, _ = valid_pairs(mos, pred)
    if m.size < MIN_PAIRS_CORR:
        return None
    if _is_constant(m) or _is_constant(p):
        return 0.0
    value = float(fn(m, p))
    return value if math.isfinite(value) else None


def srcc(mos, pred) -> float | None:
    """Spearman rank correlation."""
    return _correlation(lambda a, b: stats.spearmanr(a, b)[0], mos, pred)


def krcc(mos, pred) -> float | None:
    """Kendall rank correlation (tau-b, which handles the ties that MOS and rounded scores have)."""
    return _correlation(lambda a, b: stats.kendalltau(a, b)[0], mos, pred)


def plcc(mos, pred) -> float | None:
    """Pearson linear correlation on the raw predictions."""
    return _correlation(lambda a, b: np.corrcoef(a, b)[0, 1], mos, pred)


def rmse(mos, pred) -> float | None:
    """Root mean squared error; None with no valid pair. Only meaningful when both are on the same scale."""
    m, p, _ = valid_pairs(mos, pred)
    if m.size == 0:
        return None
    return float(np.sqrt(np.mean((m - p) ** 2)))


def logistic4(x, b1, b2, b3, b4):
    """f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2, written with expit so large |x| cannot overflow."""
    scale = max(abs(b4), 1e-12)
    return (b1 - b2) * special.expit((np.asarray(x, dtype=float) - b3) / scale) + b2


def _logistic4_jacobian(x, b1, b2, b3, b4):
    """Analytic derivatives. Finite differences scale their step with |parameter| and go blind when a start value
    is ~0 (b3 = mean(pred) often is, for centred predictions), leaving that parameter stuck at its start."""
    scale = max(abs(b4), 1e-12)
    z = (np.asarray(x, dtype=float) - b3) / scale
    s = special.expit(z)
    slope = (b1 - b2) * s * (1.0 - s)
    return np.stack([s, 1.0 - s, -slope / scale, -slope * z / scale * (1.0 if b4 >= 0 else -1.0)], axis=1)


class LogisticFit(NamedTuple):
    plcc: float | None  # PLCC(mos, f(pred)), or the raw PLCC when the fit failed
    rmse: float | None  # RMSE(mos, f(pred)), or the raw RMSE when the fit failed
    ok: bool  # False: the fit failed or had too few points, and the raw values stand in
    params: tuple[float, float, float, float] | None
    reason: str  # why the fit was not used ("" when ok)


def fit_logistic(mos, pred) -> LogisticFit:
    """The IQA papers' nonlinear mapping before PLCC/RMSE (VQEG practice), with an honest fallback.

    Start: b1 = max(MOS), b2 = min(MOS) (the curve's two plateaus), b3 = mean(pred) (its midpoint), b4 = std(pred)
    (its width). The mapping may come out decreasing (b1 < b2) for an anti-correlated predictor; then the mapped
    predictions correlate positively with MOS, so we give the PLCC the sign of the mapping's slope. Otherwise a
    model that gets quality backwards would report a high PLCC next to a negative SRCC.
    """
    m, p, _ = valid_pairs(mos, pred)
    raw_plcc, raw_rmse = plcc(m, p), rmse(m, p)

    def fallback(reason: str) -> LogisticFit:
        return LogisticFit(raw_plcc, raw_rmse, False, None, reason)

    if m.size < MIN_PAIRS_LOGISTIC:
        return fallback(f"needs at least {MIN_PAIRS_LOGISTIC} valid pairs, got {m.size}")
    if _is_constant(m) or _is_constant(p):
        return fallback("constant MOS or constant predictions")
    start = [float(m.max()), float(m.min()), float(p.mean()), float(p.std()) or 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning about the covariance: we do not use the covariance
            params, _ = optimize.curve_fit(logistic4, p, m, p0=start, jac=_logistic4_jacobian, maxfev=20000)
    except (RuntimeError, ValueError, FloatingPointError) as exc:
        return fallback(f"logistic fit failed: {exc}")
    if not np.all(np.isfinite(params)):
        return fallback("logistic fit returned non-finite parameters")
    mapped = logistic4(p, *params)
    if not np.all(np.isfinite(mapped)) or _is_constant(mapped) or np.ptp(mapped) < 1e-12 * max(1.0, np.ptp(m)):
        return fallback("logistic fit collapsed to a constant")
    value = float(np.corrcoef(m, mapped)[0, 1])
    sign = 1.0 if params[0] >= params[1] else -1.0
    return LogisticFit(sign * value, rmse(m, mapped), True, tuple(float(v) for v in params), "")


def plcc_logistic(mos, pred) -> tuple[float | None, bool]:
    """(PLCC after the 4-parameter logistic map, fit_ok). fit_ok False: the value is the raw PLCC."""
    fit = fit_logistic(mos, pred)
    if not fit.ok:
        warnings.warn(f"plcc_logistic: {fit.reason}; reporting raw PLCC", RuntimeWarning, stacklevel=2)
    return fit.plcc, fit.ok


def compute_metrics(mos: Sequence, pred: Sequence) -> dict:
    """Every number `vqrl eval` reports for one dataset, JSON-ready (None where a statistic is undefined).

    plcc / rmse are after the logistic map (the papers' convention), plcc_raw / rmse_raw before it; when the fit is
    not possible `logistic_fit` is False and plcc / rmse equal the raw ones (`logistic_note` says why).
    """
    m, p, dropped = valid_pairs(mos, pred)
    n = int(m.size + dropped)
    fit = fit_logistic(m, p)
    return {
        "n": n,
        "n_valid": int(m.size),
        "parse_fail_rate": (dropped / n) if n else None,
        "srcc": srcc(m, p),
        "krcc": krcc(m, p),
        "plcc": fit.plcc,
        "plcc_raw": plcc(m, p),
        "rmse": fit.rmse,
        "rmse_raw": rmse(m, p),
        "logistic_fit": fit.ok,
        "logistic_params": list(fit.params) if fit.params else None,
        "logistic_note": fit.reason,
        "constant_prediction": bool(_is_constant(p)),
    }
