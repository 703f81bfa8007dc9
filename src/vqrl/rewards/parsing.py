"""Turn model completions and dataset values into plain Python values (text, answer, number, column).

It is lenient and total: it never raises, never scores (strictness is the rewards' business) and stays linear-time.
"""

from __future__ import annotations

import math
import re

from ..data.records import DECIMAL, MAX_NUMBER_CHARS

# A score, option or box answer is short; longer answer texts are not parsed (this caps the work per answer).
MAX_ANSWER_CHARS = 4096

# Tags are matched case-insensitively with optional inner spaces (`<Answer >`, `</ answer>`). Each pattern is a
# fixed word between `\s*` runs, so a scan is linear even on adversarial input.
ANSWER_OPEN = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
ANSWER_CLOSE = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)
THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)

# ASCII digits only: Python's float() accepts "٣.٥", a reward must not (the same rule as a record's numbers).
NUMBER = DECIMAL
_SCORE = re.compile(rf"(?:score\s*[:=]?\s*)?({NUMBER})\s*\.?", re.IGNORECASE)
_NUMERIC = re.compile(NUMBER)


def completion_text(completion) -> str:
    """The assistant text of a TRL completion: a string, or a conversational list of messages.

    Message content may be a string or a list of parts (`{"type": "text", "text": ...}`; other parts are skipped).
    Several assistant messages are joined with newlines. Anything else gives "".
    """
    try:
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict):
            completion = [completion]
        if not isinstance(completion, (list, tuple)):
            return ""
        texts = []
        for message in completion:
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                texts.append(_content_text(message.get("content")))
        return "\n".join(texts)
    except Exception:  # a malformed completion is an empty one
        return ""


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        return ""
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def extract_answer(text) -> str | None:
    """The stripped content of the last complete `<answer>...</answer>` pair, or None when there is none.

    "Last pair" = the last opening tag that a closing tag follows, up to the first closing tag after it; so an
    unclosed trailing `<answer>` is ignored and `<answer><answer>3</answer></answer>` gives "3".
    """
    if not isinstance(text, str):
        return None
    try:
        last_close = None
        for last_close in ANSWER_CLOSE.finditer(text):
            pass
        if last_close is None:
            return None
        last_open = None
        for last_open in ANSWER_OPEN.finditer(text, 0, last_close.start()):
            pass
        if last_open is None:
            return None
        close = ANSWER_CLOSE.search(text, last_open.end())
        return text[last_open.end():close.start()].strip()
    except Exception:
        return None


def think_end(text) -> int | None:
    """Where the think text ends: just after the first close tag THINK_CLOSE matches (`</think>`, `</Think>`,
    `</ think>`), or None without one. `format` accepts exactly one such tag, so this is the tag it accepted; the
    Refine trainer cuts the thought here, so the completion's own answer never becomes its "think" context."""
    if not isinstance(text, str):
        return None
    match = THINK_CLOSE.search(text)
    return match.end() if match else None


def thought_of(text: str) -> str:
    """The completion's thought, the context in which its score is read (Refine's PD, `vqrl eval --mode expected`):
    up to and including its first think close tag (the rule `format` uses: `</think>`, `</Think>`, `</ think>`), so
    its own answer is never part of it; the whole text, closed, when there is no close tag (as the seed cuts it)."""
    end = think_end(text)
    return text[:end] if end is not None else text + "</think>"


def parse_number(answer) -> float | None:
    """A finite float from an answer text such as `Score: 3.62`, `3.6`, `4`, `score:4.0` or `4.`; else None.

    The whole answer must be that one number (with an optional `Score:` label): `4/5`, `3 out of 5`, `nan`,
    `inf`, `1e3` and non-ASCII digits are rejected.
    """
    if not isinstance(answer, str) or len(answer) > MAX_NUMBER_CHARS:
        return None
    match = _SCORE.fullmatch(answer.strip())
    if match is None:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def parse_score(text) -> float | None:
    """The number in the last `<answer>` of a completion text; None without `<answer>` tags.

    Tag-less text is not parsed: a number somewhere in free text is not an answer.
    """
    return parse_number(extract_answer(text))


def numbers_in(text: str, limit: int = MAX_ANSWER_CHARS) -> list[float]:
    """All ASCII decimal numbers in the first `limit` characters of text, as floats (for boxes and labels)."""
    if not isinstance(text, str):
        return []
    return [float(m.group()) for m in _NUMERIC.finditer(text, 0, limit)]


def column(kwargs: dict, name: str, n: int) -> list:
    """Dataset column `name` as a list of n values; all None when absent (the column does not apply)."""
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"reward column {name!r} must be a list of {n} values (one per completion), got {got}")
    return list(values)
