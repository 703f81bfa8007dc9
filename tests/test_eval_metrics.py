"""Metric functions against scipy, the logistic PLCC against an independent fit, and the edge cases eval meets."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import optimize, stats

from vqrl.eval import metrics as M


def _data(seed=0, n=300, noise=0.5):
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    pred = 1 + 4 / (1 + np.exp(-(mos - 3) * 1.3)) + rng.normal(0, noise, n)  # monotone but nonlinear
    return mos, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agree_with_scipy(seed):
    mos, pred = _data(seed)
    assert M.srcc(mos, pred) == pytest.approx(stats.spearmanr(mos, pred)[0], abs=1e-12)
    assert M.krcc(mos, pred) == pytest.approx(stats.kendalltau(mos, pred)[0], abs=1e-12)
    assert M.plcc(mos, pred) == pytest.approx(stats.pearsonr(mos, pred)[0], abs=1e-12)
    assert M.rmse(mos, pred) == pytest.approx(math.sqrt(np.mean((mos - pred) ** 2)), abs=1e-12)


def test_ties_use_kendall_tau_b():
    mos = np.array([1, 2, 2, 3, 4, 4, 5.0])
    pred = np.array([1, 1, 2, 3, 3, 4, 5.0])
    assert M.krcc(mos, pred) == pytest.approx(stats.kendalltau(mos, pred, variant="b")[0])


def test_logistic_plcc_matches_independent_fit():
    mos, pred = _data(3, n=400)

    # an independent implementation of the same model, fitted from its own start point
    def f(x, b1, b2, b3, b4):
        return (b1 - b2) / (1 + np.exp(-(x - b3) / abs(b4))) + b2

    params, _ = optimize.curve_fit(f, pred, mos, p0=[5.0, 1.0, 3.0, 1.0], maxfev=20000)
    mapped = f(pred, *params)
    expected_plcc = stats.pearsonr(mos, mapped)[0]
    expected_rmse = math.sqrt(np.mean((mos - mapped) ** 2))

    value, ok = M.plcc_logistic(mos, pred)
    assert ok
    assert value == pytest.approx(expected_plcc, abs=1e-6)
    out = M.compute_metrics(mos, pred)
    assert out["plcc"] == pytest.approx(expected_plcc, abs=1e-6)
    assert out["rmse"] == pytest.approx(expected_rmse, abs=1e-5)
    assert out["plcc"] > out["plcc_raw"]  # the data are nonlinear: the map must help
    assert out["rmse"] < out["rmse_raw"]


def test_logistic_recovers_an_exact_logistic():
    x = np.linspace(-3, 3, 50)
    y = M.logistic4(x, 4.5, 1.2, 0.3, 0.7)
    fit = M.fit_logistic(y, x)
    assert fit.ok and fit.plcc == pytest.approx(1.0, abs=1e-9) and fit.rmse == pytest.approx(0.0, abs=1e-6)
    b1, b2, b3, b4 = fit.params
    assert (b1, b2, b3, abs(b4)) == pytest.approx((4.5, 1.2, 0.3, 0.7), abs=1e-4)


def test_logistic_handles_extreme_prediction_scale():
    """Predictions on a 0-1000 scale with outliers must not overflow exp()."""
    mos, pred = _data(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning may escape
        out = M.compute_metrics(mos, np.append(pred[:-1] * 250, 1e6))
    assert out["logistic_fit"] and -1 <= out["plcc"] <= 1


def test_anti_correlated_prediction_keeps_negative_sign():
    mos, pred = _data(5)
    out = M.compute_metrics(mos, -pred)
    assert out["srcc"] < 0 and out["plcc_raw"] < 0 and out["plcc"] < 0


def test_parse_failures_are_dropped_and_counted():
    mos, pred = _data(6, n=100)
    pred = pred.astype(object)
    pred[[3, 10, 20]] = None
    pred[[40, 50]] = float("nan")
    out = M.compute_metrics(mos, list(pred))
    keep = np.ones(100, bool)
    keep[[3, 10, 20, 40, 50]] = False
    assert out["n"] == 100 and out["n_valid"] == 95 and out["parse_fail_rate"] == pytest.approx(0.05)
    clean = np.asarray(pred[keep], float)
    assert out["srcc"] == pytest.approx(stats.spearmanr(mos[keep], clean)[0])
    m, p, dropped = M.valid_pairs(mos, pred)
    assert dropped == 5 and m.size == p.size == 95


def test_all_predictions_missing():
    out = M.compute_metrics([1.0, 2.0, 3.0, 4.0], [None, math.nan, None, math.nan])
    assert out["n"] == 4 and out["n_valid"] == 0 and out["parse_fail_rate"] == 1.0
    for key in ("srcc", "krcc", "plcc", "plcc_raw", "rmse", "rmse_raw"):
        assert out[key] is None
    assert out["logistic_fit"] is False
    json.dumps(out, allow_nan=False)  # JSON-safe: no NaN anywhere


def test_empty_input():
    out = M.compute_metrics([], [])
    assert out["n"] == 0 and out["parse_fail_rate"] is None and out["srcc"] is None
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_too_few_pairs_for_the_logistic_fit(n):
    mos = np.array([1.0, 2.5, 4.0, 3.0][:n])
    pred = np.array([1.5, 2.0, 4.5, 2.5][:n])
    with pytest.warns(RuntimeWarning, match="raw PLCC"):
        value, ok = M.plcc_logistic(mos, pred)
    assert not ok
    out = M.compute_metrics(mos, pred)
    assert out["logistic_fit"] is False and "at least 5" in out["logistic_note"]
    assert out["plcc"] == out["plcc_raw"] and out["rmse"] == out["rmse_raw"]
    if n == 1:
        assert out["srcc"] is None and out["plcc"] is None and out["rmse"] == pytest.approx(0.5)
    else:
        assert out["srcc"] == pytest.approx(stats.spearmanr(mos, pred)[0])
    json.dumps(out, allow_nan=False)


def test_constant_predictions_give_zero_not_nan():
    mos, _ = _data(7, n=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning must not be reached
        out = M.compute_metrics(mos, [3.0] * 50)
    assert out["constant_prediction"] is True
    assert out["srcc"] == out["krcc"] == out["plcc"] == out["plcc_raw"] == 0.0
    assert out["logistic_fit"] is False
    assert out["rmse"] == pytest.approx(math.sqrt(np.mean((mos - 3.0) ** 2)))
    json.dumps(out, allow_nan=False)


def test_constant_mos_gives_zero():
    assert M.srcc([3.0] * 6, [1, 2, 3, 4, 5, 6]) == 0.0
    assert M.plcc([3.0] * 6, [1, 2, 3, 4, 5, 6]) == 0.0


@pytest.mark.parametrize("which", ["mos", "pred"])
def test_no_logistic_fit_is_tried_when_either_side_is_constant(which):
    """A constant MOS or constant predictions leave nothing for the logistic to map: no fit is tried, the summary
    says why (not "the fit failed"), and the raw values stand."""
    mos, pred = _data(3, n=40)
    if which == "mos":
        mos = np.full_like(mos, 3.0)
    else:
        pred = np.full_like(pred, 3.0)
    fit = M.fit_logistic(mos, pred)
    assert fit.ok is False and fit.params is None and fit.reason == "constant MOS or constant predictions"
    out = M.compute_metrics(mos, pred)
    assert out["logistic_fit"] is False and out["logistic_note"] == "constant MOS or constant predictions"
    assert out["plcc"] == out["plcc_raw"] == 0.0


@pytest.mark.parametrize("outcome, reason", [
    (RuntimeError("Optimal parameters not found: maxfev reached"),
     "logistic fit failed: Optimal parameters not found: maxfev reached"),
    (np.array([np.nan, 1.0, 3.0, 1.0]), "logistic fit returned non-finite parameters"),
    (np.array([4.0, 4.0, 3.0, 1.0]), "logistic fit collapsed to a constant"),  # b1 == b2: a flat mapping
    # a range of 1e-12 on a MOS range of ~4: flat to within rounding, not a mapping to correlate
    (np.array([3.0 + 1e-12, 3.0, 3.0, 1.0]), "logistic fit collapsed to a constant"),
])
def test_a_logistic_fit_that_fails_falls_back_to_the_raw_values_and_says_why(monkeypatch, outcome, reason):
    """The summary never reports a PLCC from a failed or degenerate fit: the raw PLCC and RMSE stand, with the
    reason in logistic_note."""
    def fit(*args, **kwargs):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, None

    monkeypatch.setattr(M.optimize, "curve_fit", fit)
    mos, pred = _data(4, n=60)
    got = M.fit_logistic(mos, pred)
    assert got == M.LogisticFit(M.plcc(mos, pred), M.rmse(mos, pred), False, None, reason)
    out = M.compute_metrics(mos, pred)
    assert out["logistic_fit"] is False and out["logistic_note"] == reason and out["plcc"] == out["plcc_raw"]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="length"):
        M.compute_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="MOS must be finite"):
        M.compute_metrics([1, None, 3], [1, 2, 3])


@pytest.mark.parametrize("b4", [0.7, -0.7])
def test_the_logistic_jacobian_is_the_derivative_of_the_logistic(b4):
    """The fit uses the analytic Jacobian: a wrong sign or factor in it still 'fits', only worse, so it is checked
    against central differences of logistic4 itself."""
    x = np.linspace(-2.0, 3.0, 11)
    params = np.array([4.5, 1.2, 0.4, b4])
    jac = M._logistic4_jacobian(x, *params)
    for k in range(4):
        step = np.zeros(4)
        step[k] = 1e-6
        numeric = (M.logistic4(x, *(params + step)) - M.logistic4(x, *(params - step))) / 2e-6
        np.testing.assert_allclose(jac[:, k], numeric, rtol=1e-5, atol=1e-7)
