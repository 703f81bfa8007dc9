"""Row rewards for quality scoring: answer structure (format, format_strict) and closeness to the MOS.

Row functions `(text, row, **options) -> (reward, parse_failed)`: they must not raise, log or see other rows.
"""

from __future__ import annotations

import math
import re

from .parsing import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, as_float, extract_answer, parse_number

# |pred - MOS| <= threshold is compared with this slack so that 4.9 vs 4.4 counts as 0.5, not 0.5000000000000004.
TOLERANCE = 1e-9

# The seed's rule `^<think>.*?</think>\s*<answer>\s*Score:\s*\d\.\d{2}\s*</answer>$` (re.DOTALL), rewritten: the
# lazy `.*?` can only end at the LAST `</think>` (the answer part cannot contain one), so we rfind it and match the
# tail once instead of backtracking. `$` also allowed one final newline; `\d` becomes ASCII [0-9].
_STRICT_TAIL = re.compile(r"\s*<answer>\s*Score:\s*[0-9]\.[0-9]{2}\s*</answer>\n?")


def is_scoring_row(row: dict) -> bool:
    """Whether the row's answer must be a number: its `type` is `scoring_*`, or, untyped, its solution is numeric."""
    rtype = row.get("type")
    if isinstance(rtype, str):
        return rtype.split("_", 1)[0].lower() == "scoring"
    solution = row.get("solution")
    return solution is None or as_float(solution) is not None


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


def format_strict_reward(text: str, row: dict) -> tuple[float, bool]:
    """The seed's exact rule: `<think>…</think>` then `<answer>Score: d.dd</answer>`, nothing else around.

    Non-scoring rows always get 0 (as in the seed); their parse failures are counted as `format` counts them.
    """
    failed = not _answer_ok(extract_answer(text), row)
    if not text.startswith("<think>"):
        return 0.0, failed
    end_think = text.rfind("</think>")
    if end_think < len("<think>"):
        return 0.0, failed
    ok = _STRICT_TAIL.fullmatch(text, end_think + len("</think>")) is not None
    return (1.0 if ok else 0.0), failed


def _prediction(text: str, row: dict) -> tuple[float | None, float | None]:
    return parse_number(extract_answer(text)), as_float(row.get("solution"))


def answer_reward(text: str, row: dict, answer_threshold: float = 0.5) -> tuple[float, bool | None]:
    """The seed's accuracy reward: 1 if |pred − MOS| ≤ threshold (0.5 seed, 0.35 Q-Insight), else 0."""
    pred, mos = _prediction(text, row)
    if mos is None:
        return 0.0, None
    if pred is None:
        return 0.0, True
    return (1.0 if abs(pred - mos) <= answer_threshold + TOLERANCE else 0.0), False


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
