"""Row rewards for quality scoring: answer structure (format, format_strict) and closeness to the MOS (answer,
answer_strict, score_l1, score_gauss). Sources and differences: docs/rewards.md.

Row functions `(text, row, **options) -> (reward, parse_failed)`: they must not raise, log or see other rows.
"""

from __future__ import annotations

import math
import re

from ..data.records import to_float
from .parsing import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, extract_answer, parse_number

# |pred - MOS| is compared with this slack so that 2.20 vs 1.70 counts as 0.5, not 0.5000000000000002.
TOLERANCE = 1e-9

# The seed's rules (jzhws/VisualQualityAssessment-RL-Trainer, src/open_r1/grpo.py), kept exact: literal lower-case
# tags, Python's Unicode `\d` and `\s`, DOTALL. Its think/answer pattern is `<think>`, at least one character, then
# the tail below. A match exists iff some `<think>` is followed, one character or more after it, by the tail; the first
# `<think>` is the best start, so one find and one search decide it in linear time (no backtracking over `.+?`).
SEED_THINK_OPEN = "<think>"
_SEED_TAIL = re.compile(r"</think>\s*<answer>\s*Score:\s*\d\.\d\d\s*</answer>")
_SEED_ANSWER = re.compile(r"<answer>\s*Score:\s*(\d\.\d\d)\s*</answer>")
SEED_ANSWER_THRESHOLD = 0.5


def is_scoring_row(row: dict) -> bool:
    """Whether the row's answer must be a number: its `type` is `scoring_*`, or, untyped, its solution is numeric."""
    rtype = row.get("type")
    if isinstance(rtype, str):
        return rtype.split("_", 1)[0].lower() == "scoring"
    solution = row.get("solution")
    return solution is None or to_float(solution) is not None


def _answer_ok(answer: str | None, row: dict) -> bool:
    if answer is None:
        return False
    return parse_number(answer) is not None if is_scoring_row(row) else bool(answer)


def think_answer(text: str) -> str | None:
    """The answer of a `<think>...</think> <answer>...</answer>` completion, None if it is not exactly that shape.

    Exactly one of each tag (case/space-lenient), in order, nothing before `<think>` or after `</answer>` but
    whitespace, only whitespace between `</think>` and `<answer>`. Counting tags keeps this linear-time.
    """
    found = []
    for pattern in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        matches = []
        for match in pattern.finditer(text):
            matches.append(match)
            if len(matches) > 1:
                return None
        if not matches:
            return None
        found.append(matches[0])
    think_open, think_close, answer_open, answer_close = found
    if text[:think_open.start()].strip() or text[answer_close.end():].strip():
        return None
    in_order = think_open.end() <= think_close.start() and think_close.end() <= answer_open.start()
    if not in_order or answer_open.end() > answer_close.start():
        return None
    if text[think_close.end():answer_open.start()].strip():
        return None
    return text[answer_open.end():answer_close.start()].strip()


def format_reward(text: str, row: dict) -> tuple[float, bool]:
    """1 for `<think>…</think><answer>…</answer>` whose answer parses (a number on scoring rows, else non-empty)."""
    failed = not _answer_ok(extract_answer(text), row)
    answer = think_answer(text)
    return (1.0 if _answer_ok(answer, row) else 0.0), failed


def format_nothink_reward(text: str, row: dict) -> tuple[float, bool]:
    """No-think mode's format: exactly one `<answer>…</answer>`, nothing around it, no `<think>`, answer parses."""
    answer = extract_answer(text)
    failed = not _answer_ok(answer, row)
    opens, closes = list(ANSWER_OPEN.finditer(text)), list(ANSWER_CLOSE.finditer(text))
    if len(opens) != 1 or len(closes) != 1 or THINK_OPEN.search(text) or THINK_CLOSE.search(text):
        return 0.0, failed
    if text[:opens[0].start()].strip() or text[closes[0].end():].strip():
        return 0.0, failed
    return (1.0 if not failed else 0.0), failed


def _seed_format(text: str) -> bool:
    """Whether the seed's think/answer pattern occurs anywhere in text."""
    open_at = text.find(SEED_THINK_OPEN)
    return open_at >= 0 and _SEED_TAIL.search(text, open_at + len(SEED_THINK_OPEN) + 1) is not None


def format_strict_reward(text: str, row: dict) -> tuple[float, bool]:
    """The seed's format reward, exactly: its think/answer pattern found anywhere in the completion (`re.search`).

    So text around it is allowed, the think must be non-empty, tags are literal lower case, and the score is one
    digit, a point and two digits (any Unicode decimal digit, as Python's `\\d`). The row is not looked at; parse
    failures are counted as `format` counts them.
    """
    failed = not _answer_ok(extract_answer(text), row)
    return (1.0 if _seed_format(text) else 0.0), failed


def seed_mos(value) -> float | None:
    """The MOS as the seed reads it, `float(str(solution))`; None where that raises (the seed would crash)."""
    try:
        return float(str(value))
    except (ValueError, TypeError, OverflowError):
        return None


def answer_strict_reward(text: str, row: dict) -> tuple[float, bool | None]:
    """The seed's accuracy reward, exactly: 0 unless the completion STARTS with the seed's think/answer pattern
    (`re.match`); then the last `<answer>Score: d.dd</answer>` in it counts, 1 if |pred − MOS| ≤ 0.5 in plain float
    arithmetic (no tolerance: 2.20 vs 1.70 is 0.5000000000000002 and scores 0, as in the seed)."""
    mos = seed_mos(row.get("solution"))
    if not (text.startswith(SEED_THINK_OPEN) and _seed_format(text)):
        return 0.0, (None if mos is None else True)
    last = None
    for last in _SEED_ANSWER.finditer(text):
        pass
    try:
        pred = float(last.group(1))
    except (AttributeError, ValueError):  # cannot happen after the pattern matched; never raise
        return 0.0, True
    if mos is None:
        return 0.0, None
    return (1.0 if abs(pred - mos) <= SEED_ANSWER_THRESHOLD else 0.0), False


def _prediction(text: str, row: dict) -> tuple[float | None, float | None]:
    return parse_number(extract_answer(text)), to_float(row.get("solution"))


def answer_reward(text: str, row: dict, answer_threshold: float = 0.5,
                  answer_strict_less: bool = False) -> tuple[float, bool | None]:
    """1 if |pred − MOS| ≤ threshold (0.5 seed, 0.35 Q-Insight), else 0; with answer_strict_less, |pred − MOS| <
    threshold (Q-Insight's test). The boundary is decided in decimals, not binary floats (TOLERANCE): 2.20 vs 1.70
    is exactly 0.5 whichever comparison is chosen."""
    pred, mos = _prediction(text, row)
    if mos is None:
        return 0.0, None
    if pred is None:
        return 0.0, True
    error = abs(pred - mos)
    hit = error < answer_threshold - TOLERANCE if answer_strict_less else error <= answer_threshold + TOLERANCE
    return (1.0 if hit else 0.0), False


def score_l1_reward(text: str, row: dict) -> tuple[float, bool | None]:
    """max(0, 1 − |pred − MOS| / 4): linear closeness over the width of the 1–5 scale."""
    pred, mos = _prediction(text, row)
    if mos is None:
        return 0.0, None
    if pred is None:
        return 0.0, True
    return max(0.0, 1.0 - abs(pred - mos) / 4.0), False


def score_gauss_reward(text: str, row: dict, gauss_sigma: float = 0.5) -> tuple[float, bool | None]:
    """exp(−(pred − MOS)² / (2σ²)); σ = 0.5 gives 0.61 at 0.5 off and 0.14 at 1.0 off: dense but peaked."""
    pred, mos = _prediction(text, row)
    if mos is None:
        return 0.0, None
    if pred is None:
        return 0.0, True
    z = (pred - mos) / gauss_sigma
    return (math.exp(-0.5 * z * z) if abs(z) < 1e150 else 0.0), False
