"""Per-completion rewards for Stage-1 perception tasks: distortion type and severity, option choice, box IoU.

Row functions `(text, row) -> (reward, parse_failed)` like scoring.py; they must not raise or see other rows.
"""

from __future__ import annotations

import json
import math
import re

from ..data.records import to_float
from .parsing import MAX_ANSWER_CHARS, NUMBER, extract_answer, numbers_in

# Severity words, mildest first: "slight" = 1 ... "extreme" = 5 (the 1..5 levels of KADID-style distortions).
SEVERITY_WORDS = {"slight": 1, "mild": 2, "moderate": 3, "severe": 4, "extreme": 5}
# Q-Insight's five labels (slight, moderate, obvious, serious, catastrophic) put "moderate" second, not third: its
# words are compared as words, never turned into levels.
QINSIGHT_SEVERITY_WORDS = ("slight", "moderate", "obvious", "serious", "catastrophic")
_WORDS = "|".join(dict.fromkeys([*SEVERITY_WORDS, *QINSIGHT_SEVERITY_WORDS]))
_SEVERITY = re.compile(
    rf"(?:severity|level|degree)\s*(?:level\s*)?(?:is\s+|of\s+|[:=-]\s*)?(?P<a>[0-9]+|{_WORDS})\b"
    rf"|\b(?P<b>[0-9]+|{_WORDS})\s+(?:severity|level)\b",
    re.IGNORECASE,
)
_NAME_LABEL = re.compile(r"^\s*(?:distortion\s*(?:type|name|class)?|type)\s*(?:is\s+|[:=-])?", re.IGNORECASE)
# JSON answer keys, first found wins: ours, then Q-Insight's `distortion_class`.
_NAME_KEYS = ("distortion", "distortion_class", "distortion_type", "type", "name")
_SEVERITY_KEYS = ("severity", "level", "degree")

_LETTER = re.compile(r"(?:(?:answer|option)\s*[:=-]?\s*)?\(?\s*([A-Za-z])\s*\)?\s*[.):]?", re.IGNORECASE)
_LABEL_PREFIX = re.compile(r"\s*(?:\(([A-Z])\)\s*|([A-Z])[.):]\s+)")
_BOX = re.compile(rf"[\[(]\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*[\])]")


def _applies(row: dict, family: str) -> bool:
    """Whether the row is this reward's task: its `type` is `<family>_*`, or it is untyped.

    Stage-1 records carry `distortion`, `severity` and `bbox` whatever their task, so the columns alone do not tell.
    """
    rtype = row.get("type")
    return not isinstance(rtype, str) or rtype.split("_", 1)[0].lower() == family


def _name_key(name) -> str:
    """Distortion names compare case-, space-, underscore- and punctuation-insensitively: "JPEG_compression"."""
    return "".join(ch for ch in str(name).casefold() if ch.isalnum()) if name is not None else ""


def _text_key(text) -> str:
    """Option texts compare case- and punctuation-insensitively, word boundaries kept."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in str(text).casefold()).split())


def severity_level(value) -> int | None:
    """An integer severity from 3, 3.0, "3" or a word of SEVERITY_WORDS; None otherwise."""
    if isinstance(value, str) and value.strip().casefold() in SEVERITY_WORDS:
        return SEVERITY_WORDS[value.strip().casefold()]
    number = to_float(value)
    return int(number) if number is not None and number == int(number) else None


def _unfence(text: str) -> str:
    """The body of a Markdown code block (```json ... ```), or the text itself."""
    if text.startswith("```"):
        text = text[3:].split("\n", 1)[1] if "\n" in text else text[3:]
        text = text[:-3] if text.endswith("```") else text
    return text.strip()


def _severity_keys(value) -> set:
    """What a severity label compares by: its level (3, 3.0, "3" or a word of SEVERITY_WORDS) and its text (any
    word, e.g. Q-Insight's "serious"). Two labels match when they share a key; no key at all = no label."""
    keys = set()
    level = severity_level(value)
    if level is not None:
        keys.add(("level", level))
    if isinstance(value, str) and _name_key(value):
        keys.add(("text", _name_key(value)))
    return keys


def parse_distortion(answer: str) -> tuple[str, object]:
    """(name key, severity label as written) from JSON `{"distortion": ..., "severity": ...}` (or Q-Insight's
    `{"distortion_class": ..., "severity": ...}`) or text like "gaussian blur, severity 3" /
    "Distortion: jpeg compression; Severity: moderate". Name key "" and severity None when absent."""
    text = _unfence(answer.strip())
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            lowered = {str(k).casefold(): v for k, v in obj.items()}
            name = next((lowered[k] for k in _NAME_KEYS if isinstance(lowered.get(k), str)), "")
            severity = next((lowered[k] for k in _SEVERITY_KEYS if k in lowered), None)
            return _name_key(name), severity
    match = _SEVERITY.search(text)
    severity = (match.group("a") or match.group("b")) if match else None
    for segment in re.split(r"[;,\n]", _SEVERITY.sub(" ", text)):
        name = _name_key(_NAME_LABEL.sub("", segment))
        if name:
            return name, severity
    return "", severity


def distortion_reward(text: str, row: dict) -> tuple[float, bool | None]:
    """Q-Insight's scheme: 0.25 for the right distortion type, 1.0 when the severity is right too.

    The truth is the `distortion` column (else a string `solution`) and the `severity` column (a level 1-5, one of
    our words or any label such as Q-Insight's "serious", compared as text). Right severity with the wrong type earns
    nothing; a row without a severity label gives 1.0 for the right type.
    """
    if not _applies(row, "distortion"):
        return 0.0, None
    truth = row.get("distortion")
    if truth is None and isinstance(row.get("solution"), str):
        truth = row.get("solution")
    truth_name = _name_key(truth)
    if not truth_name:
        return 0.0, None
    answer = extract_answer(text)
    if answer is None or not answer or len(answer) > MAX_ANSWER_CHARS:
        return 0.0, True
    name, severity = parse_distortion(answer)
    if not name:
        return 0.0, True
    if name != truth_name:
        return 0.0, False
    truth_keys = _severity_keys(row.get("severity"))
    if not truth_keys or truth_keys & _severity_keys(severity):
        return 1.0, False
    return 0.25, False


def _option_letter(value) -> str | None:
    """"A", "(a)", "A.", "Answer: B" -> the upper-case letter."""
    if not isinstance(value, str):
        return None
    match = _LETTER.fullmatch(value.strip())
    return match.group(1).upper() if match else None


def _label_letter(text: str) -> str | None:
    """The letter of a labelled text: "A. sharp", "(B) blurry", "C) noisy" -> "A", "B", "C"."""
    match = _LABEL_PREFIX.match(text)
    return (match.group(1) or match.group(2)) if match else None


def _strip_label(option) -> str:
    """Option texts may carry their own label ("A. sharp"); compare the text after it."""
    text = str(option)
    match = _LABEL_PREFIX.match(text)
    return text[match.end():] if match else text


def choice_reward(text: str, row: dict) -> tuple[float, bool | None]:
    """1 if the answer names the right option: its letter (`A`, `(A)`, `A.`, `A. text`) or its exact text.

    `solution` is the right letter (or the right text); `options` the option texts, listed in letter order.
    """
    solution, options = row.get("solution"), row.get("options")
    if not _applies(row, "choice") or not isinstance(solution, str) or not solution.strip():
        return 0.0, None
    options = options if isinstance(options, (list, tuple)) else []
    keys = [_text_key(_strip_label(option)) for option in options]
    truth = _option_letter(solution)
    if truth is None and _text_key(solution) in keys:
        truth = chr(65 + keys.index(_text_key(solution)))
    answer = extract_answer(text)
    if answer is None or not answer or len(answer) > MAX_ANSWER_CHARS:
        return 0.0, True
    key = _text_key(answer)
    if truth is None:  # free-text solution without a matching option: compare texts
        return (1.0 if key == _text_key(solution) else 0.0), False
    pred = chr(65 + keys.index(key)) if key and key in keys else _option_letter(answer) or _label_letter(answer)
    if pred is None:
        return 0.0, True
    return (1.0 if pred == truth else 0.0), False


def parse_box(value) -> tuple[float, float, float, float] | None:
    """A finite [x1, y1, x2, y2] from a list of 4 numbers ([[...]] unwrapped) or the last `[a, b, c, d]` in text."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]
    if isinstance(value, (list, tuple)):
        coords = [to_float(v) for v in value] if len(value) == 4 else [None]
    elif isinstance(value, str):
        match = None
        for match in _BOX.finditer(value, 0, MAX_ANSWER_CHARS):
            pass
        coords = numbers_in(match.group()) if match else [None]
    else:
        return None
    if len(coords) != 4 or any(c is None or not math.isfinite(c) for c in coords):
        return None
    return tuple(coords)


def iou_reward(text: str, row: dict) -> tuple[float, bool | None]:
    """IoU of the answered box with the `bbox` column (else a box `solution`); 0 if unparseable or degenerate."""
    if not _applies(row, "grounding"):
        return 0.0, None
    truth = parse_box(row.get("bbox"))
    if truth is None and not isinstance(row.get("solution"), str):
        truth = parse_box(row.get("solution"))
    if truth is None or not (truth[0] < truth[2] and truth[1] < truth[3]):
        return 0.0, None
    answer = extract_answer(text)
    pred = parse_box(answer) if answer else None
    if pred is None:
        return 0.0, True
    if not (pred[0] < pred[2] and pred[1] < pred[3]):
        return 0.0, False
    width = min(pred[2], truth[2]) - max(pred[0], truth[0])
    height = min(pred[3], truth[3]) - max(pred[1], truth[1])
    inter = max(0.0, width) * max(0.0, height)
    union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (truth[2] - truth[0]) * (truth[3] - truth[1]) - inter
    iou = inter / union if union > 0 else 0.0
    return (iou if math.isfinite(iou) else 0.0), False
