"""The reward registry: names -> TRL reward functions with bound options, one finite float per completion.

It must not evaluate strings: a user's reward `package.module:function` is imported by module and attribute.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
from collections.abc import Callable

from . import perception, ranking, scoring
from .parsing import column, completion_text

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("solution", "distortion", "severity", "bbox", "options", "type")


def _rows(row_fn: Callable, completions: list, kwargs: dict, options: dict) -> tuple[list, list]:
    """Apply a row function to every completion; a row that raises (a bug) scores 0, counts as failed, is logged."""
    n = len(completions)
    columns = {name: column(kwargs, name, n) for name in ROW_COLUMNS}
    values, fails = [], []
    for i, completion in enumerate(completions):
        row = {name: columns[name][i] for name in ROW_COLUMNS}
        try:
            value, failed = row_fn(completion_text(completion), row, **options)
        except Exception:
            logger.warning("reward %s raised on completion %d; scoring it 0", row_fn.__name__, i, exc_info=True)
            value, failed = 0.0, True
        values.append(value)
        fails.append(failed)
    return values, fails


class RewardFunc:
    """A TRL reward function `f(completions, **kwargs) -> list[float]` named after its registry entry.

    A class rather than a closure or a bare partial: TRL names metrics after `__name__` (`rewards/<name>/mean`)
    and unwraps partials to the inner name, and an instance pickles. `fn` is a row function
    `(text, row, **options) -> (value, failed)`, or with per_row=False a batch function
    `(completions, kwargs, **options) -> (values, fails)`; failed is None where the row's task does not apply.
    """

    def __init__(self, name: str, fn: Callable, low: float, high: float, per_row: bool = True, **options):
        self.__name__ = self.__qualname__ = name
        self.__doc__ = fn.__doc__
        self.fn, self.low, self.high, self.per_row, self.options = fn, low, high, per_row, options

    def __call__(self, completions, **kwargs) -> list[float]:
        completions = list(completions) if completions is not None else []
        if self.per_row:
            values, fails = _rows(self.fn, completions, kwargs, self.options)
        else:
            values, fails = self.fn(completions, kwargs, **self.options)
        out = [min(self.high, max(self.low, float(v))) if _finite(v) else 0.0 for v in values]
        log_metric = kwargs.get("log_metric")
        counted = [failed for failed in fails if failed is not None]
        if callable(log_metric) and counted:
            log_metric(f"parse_fail/{self.__name__}", sum(counted) / len(counted))
        return out

    def __repr__(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"<reward {self.__name__}{options}>"


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


# name -> (function, per_row, option names it takes); every reward lies in [0, 1].
_SPECS = {
    "format": (scoring.format_reward, True, ()),
    "format_strict": (scoring.format_strict_reward, True, ()),
    "format_nothink": (scoring.format_nothink_reward, True, ()),
    "answer": (scoring.answer_reward, True, ("answer_threshold", "answer_strict_less")),
    "answer_strict": (scoring.answer_strict_reward, True, ()),
    "score_l1": (scoring.score_l1_reward, True, ()),
    "score_gauss": (scoring.score_gauss_reward, True, ("gauss_sigma",)),
    "fidelity_rank": (ranking.fidelity_rank, False, ("fidelity_eps",)),
    "distortion": (perception.distortion_reward, True, ()),
    "choice": (perception.choice_reward, True, ()),
    "iou": (perception.iou_reward, True, ()),
}


# Reward options by name, with their defaults: the fields of the same names in VQRLConfig (`reward_options`).
DEFAULT_OPTIONS = {"answer_threshold": 0.5, "answer_strict_less": False, "gauss_sigma": 0.5,
                   "fidelity_eps": ranking.DEFAULT_EPS}


def _check_options(answer_threshold: float, answer_strict_less: bool, gauss_sigma: float, fidelity_eps: float) -> dict:
    if not isinstance(answer_strict_less, bool):
        raise ValueError(f"reward option answer_strict_less={answer_strict_less!r} must be true or false")
    checks = {
        "answer_threshold": (answer_threshold, lambda v: v >= 0, ">= 0"),
        "gauss_sigma": (gauss_sigma, lambda v: v > 0, "> 0"),
        "fidelity_eps": (fidelity_eps, lambda v: v > 0, "> 0"),
    }
    options = {"answer_strict_less": answer_strict_less}
    for key, (value, ok, rule) in checks.items():
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
        if not (math.isfinite(number) and ok(number)):
            raise ValueError(f"reward option {key}={value!r} must be a finite number {rule}")
        options[key] = number
    return options


def reward_options(config) -> dict:
    """The reward options a config sets (attributes named as in DEFAULT_OPTIONS; None or absent = the default), for
    `build_reward_funcs(names, **reward_options(config))`: one place maps config fields to reward options."""
    return {key: getattr(config, key) for key in DEFAULT_OPTIONS if getattr(config, key, None) is not None}


def _make(name: str, options: dict) -> RewardFunc:
    fn, per_row, takes = _SPECS[name]
    return RewardFunc(name, fn, 0.0, 1.0, per_row, **{key: options[key] for key in takes})


def _import_reward(entry: str) -> Callable:
    module_name, _, attr_path = entry.partition(":")
    parts = attr_path.split(".")
    if not all(p.isidentifier() for p in module_name.split(".") + parts):
        raise ValueError(f"reward {entry!r}: expected `package.module:function`")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward {entry!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in parts:
        if not hasattr(target, part):
            raise ValueError(f"reward {entry!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"reward {entry!r} is a {type(target).__name__}, not a function")
    return target


def build_reward_funcs(
    names: list[str],
    *,
    answer_threshold: float = DEFAULT_OPTIONS["answer_threshold"],
    answer_strict_less: bool = DEFAULT_OPTIONS["answer_strict_less"],
    gauss_sigma: float = DEFAULT_OPTIONS["gauss_sigma"],
    fidelity_eps: float = DEFAULT_OPTIONS["fidelity_eps"],
) -> list[Callable]:
    """The reward functions for `--reward_funcs`, in order: registry names with these options bound, or a user's
    `package.module:function` imported as is (its own `__name__` names its metrics).

    answer_threshold: `answer`'s tolerance (0.5 seed, 0.35 Q-Insight); answer_strict_less: `answer` counts
    |pred − MOS| < threshold (Q-Insight) instead of ≤ (the seed); gauss_sigma: `score_gauss`'s σ; fidelity_eps: the ε
    under `fidelity_rank`'s square root.
    """
    if isinstance(names, str):
        names = [names]
    options = _check_options(answer_threshold, answer_strict_less, gauss_sigma, fidelity_eps)
    funcs = []
    for entry in names:
        if isinstance(entry, str) and entry in _SPECS:
            funcs.append(_make(entry, options))
        elif isinstance(entry, str) and ":" in entry:
            funcs.append(_import_reward(entry.strip()))
        else:
            raise ValueError(
                f"unknown reward {entry!r}: use one of {', '.join(_SPECS)} or `package.module:function`"
            )
    return funcs


REWARDS: dict[str, Callable] = {name: _make(name, _check_options(**DEFAULT_OPTIONS)) for name in _SPECS}
