"""The reward registry: names -> TRL reward functions with bound options, one finite float per completion.

A reward's options live with the reward: its function's keyword parameters are its options, set by name from the
config (`--reward_kwargs`, or a recipe's `reward_kwargs:` mapping), so adding one needs no edit anywhere else.
It must not evaluate strings: a user's reward `package.module:function` is imported by module and attribute.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
from collections.abc import Callable

from ..data.records import REWARD_COLUMNS, to_float
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
        out = [min(self.high, max(self.low, float(v))) if _real(v) else 0.0 for v in values]
        log_metric = kwargs.get("log_metric")
        counted = [failed for failed in fails if failed is not None]
        if callable(log_metric) and counted:
            log_metric(f"parse_fail/{self.__name__}", sum(counted) / len(counted))
        return out

    def __repr__(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"<reward {self.__name__}{options}>"


def _real(value) -> bool:
    """A reward value TRL would take: any finite real, bools as 0 and 1 (as torch.tensor makes them)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


# name -> (function, per_row); every reward lies in [0, 1]. A reward's options are its function's own keyword
# parameters with defaults, after (text, row) for a row function or (completions, kwargs) for a batch function: to give
# a reward an option, give its function a parameter (and, where its type says too little, a rule in OPTION_RULES).
_SPECS = {
    "format": (scoring.format_reward, True),
    "format_strict": (scoring.format_strict_reward, True),
    "format_nothink": (scoring.format_nothink_reward, True),
    "answer": (scoring.answer_reward, True),
    "answer_strict": (scoring.answer_strict_reward, True),
    "score_l1": (scoring.score_l1_reward, True),
    "score_gauss": (scoring.score_gauss_reward, True),
    "fidelity_rank": (ranking.fidelity_rank, False),
    "distortion": (perception.distortion_reward, True),
    "choice": (perception.choice_reward, True),
    "iou": (perception.iou_reward, True),
}

# What a numeric option accepts besides being finite (a bool option takes true or false, any other a finite number).
OPTION_RULES = {
    "answer_threshold": (lambda v: v >= 0, ">= 0"),
    "gauss_sigma": (lambda v: v > 0, "> 0"),
    "fidelity_eps": (lambda v: v > 0, "> 0"),
}

# Names a reward function is called with by TRL or gets as dataset columns: never options.
RESERVED = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra", "num_generations",
            *REWARD_COLUMNS)


def options_of(fn: Callable, skip: int = 2) -> dict:
    """The options a function declares: its keyword-capable parameters with defaults after the first `skip` (names
    in RESERVED left out), name -> default; none for a callable without a readable signature (a builtin)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name not in RESERVED
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def _default_options() -> dict:
    out: dict = {}
    for name, (fn, _) in _SPECS.items():
        for key, default in options_of(fn).items():
            if key in out and out[key] != default:
                raise ValueError(f"reward {name}: option {key} defaults to {default!r}, another reward's to "
                                 f"{out[key]!r}")
            out[key] = default
    return out


# Reward options by name, with their defaults, read from the reward functions (`reward_options` maps a config to them).
DEFAULT_OPTIONS = _default_options()


def _check_option(key: str, value):
    """The option's value as the reward takes it, or ValueError saying what it must be."""
    default = DEFAULT_OPTIONS[key]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"reward option {key}={value!r} must be true or false")
        return value
    ok, rule = OPTION_RULES.get(key, (lambda v: True, ""))
    number = None if isinstance(value, str) else to_float(value)  # a number, not a text that looks like one
    if number is None or not ok(number):
        raise ValueError(f"reward option {key}={value!r} must be a finite number{' ' + rule if rule else ''}")
    return number


def reward_options(config) -> dict:
    """The reward options a config sets, for `build_reward_funcs(names, **reward_options(config))`: its `reward_kwargs`
    mapping (`--reward_kwargs '{"fidelity_eps": 1e-6}'`) and vqrl's older flags named as options (--answer_threshold,
    --answer_strict_less, --gauss_sigma; None or absent = the reward's default). One option set both ways with two
    values is refused."""
    given = dict(getattr(config, "reward_kwargs", None) or {})
    for key in DEFAULT_OPTIONS:
        value = getattr(config, key, None)
        if value is None:
            continue
        if key in given and given[key] != value:
            raise ValueError(f"reward option {key} is set twice: --{key} {value} and reward_kwargs "
                             f"{key}={given[key]!r}")
        given[key] = value
    return given


def _make(name: str, options: dict) -> RewardFunc:
    fn, per_row = _SPECS[name]
    bound = {key: options.get(key, default) for key, default in options_of(fn).items()}
    return RewardFunc(name, fn, 0.0, 1.0, per_row, **bound)


def _bind_user(fn: Callable, options: dict) -> Callable:
    """A user's reward with the given options its own keyword parameters name bound (TRL names its metrics after the
    function inside a partial)."""
    takes = options_of(fn, skip=0)
    bound = {key: value for key, value in options.items() if key in takes}
    return functools.partial(fn, **bound) if bound else fn


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


def build_reward_funcs(names: list[str], **options) -> list[Callable]:
    """The reward functions for `--reward_funcs`, in order: registry names with their options bound (given, else
    the function's default), or a user's `package.module:function` imported as is, with the given options that its
    own keyword parameters name bound (its own `__name__` names its metrics).

    options: answer_threshold (`answer`'s tolerance, 0.5 seed, 0.35 Q-Insight), answer_strict_less (`answer` counts
    |pred − MOS| < threshold, Q-Insight, instead of ≤, the seed), gauss_sigma (`score_gauss`'s σ), fidelity_eps (the
    ε under `fidelity_rank`'s square root), and any option a user reward declares. An option no reward takes is
    refused (a typo would otherwise change nothing).
    """
    if isinstance(names, str):
        names = [names]
    reserved = sorted(set(options) & set(RESERVED))
    if reserved:
        raise ValueError(f"reward option {reserved[0]!r} is a name TRL or the data set gives every reward, not an "
                         "option")
    checked = {key: _check_option(key, value) for key, value in options.items() if key in DEFAULT_OPTIONS}
    funcs, user_takes = [], set()
    for entry in names:
        if isinstance(entry, str) and entry in _SPECS:
            funcs.append(_make(entry, checked))
        elif isinstance(entry, str) and ":" in entry:
            fn = _import_reward(entry.strip())
            user_takes |= set(options_of(fn, skip=0))
            funcs.append(_bind_user(fn, {**options, **checked}))
        else:
            raise ValueError(
                f"unknown reward {entry!r}: use one of {', '.join(_SPECS)} or `package.module:function`"
            )
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS) - user_takes)
    if unknown:
        raise ValueError(f"unknown reward option {unknown[0]!r}: no reward takes it (vqrl's rewards take "
                         f"{', '.join(DEFAULT_OPTIONS)}; a package.module:function reward takes its own keyword "
                         "parameters)")
    return funcs


REWARDS: dict[str, Callable] = {name: _make(name, DEFAULT_OPTIONS) for name in _SPECS}
