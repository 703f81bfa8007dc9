"""Records: load the seed's JSON list format (and JSONL), check each record, mix files with weights, seeded.

Only plain data lives here (paths, MOS, perception fields); decoding pixels is media.py's job, prompts prompts.py's.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

# type -> (media field, solution kind). `mos`: a number in [1, 5]; `text`: a non-empty string; `letter`: an option
# letter; `box`: [x1, y1, x2, y2].
TASK_TYPES = {
    "scoring_image": ("image", "mos"),
    "scoring_video": ("video", "mos"),
    "distortion_image": ("image", "text"),
    "choice_image": ("image", "letter"),
    "grounding_image": ("image", "box"),
    "choice_video": ("video", "letter"),
}
PERCEPTION_FIELDS = ("options", "distortion", "severity", "bbox", "reference", "mode", "dataset")
MOS_RANGE = (1.0, 5.0)


class DataError(ValueError):
    """A problem with input data, already formatted as `FILE:INDEX: reason` lines."""


@dataclass(frozen=True)
class Problem:
    file: str
    index: int | None  # None: the problem concerns the whole file
    reason: str

    def __str__(self) -> str:
        where = self.file if self.index is None else f"{self.file}:{self.index}"
        return f"{where}: {self.reason}"


@dataclass
class LoadResult:
    records: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def read_records(path: str | os.PathLike) -> LoadResult:
    """Parse a JSON list or JSONL file record by record, so one broken record does not hide the others."""
    path = str(path)
    result = LoadResult()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.problems.append(Problem(path, None, f"cannot read file: {exc}"))
        return result
    decoder = json.JSONDecoder()
    stripped = text.lstrip()
    if not stripped:
        result.problems.append(Problem(path, None, "file is empty"))
        return result
    if stripped[0] == "[":  # a JSON list, parsed item by item so a truncated tail still reports its index
        pos, index = text.index("[") + 1, 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == "]" and index == 0:
                pos += 1
                break
            if pos >= len(text):
                line, col = _line_col(text, pos)
                result.problems.append(Problem(path, index, f"invalid JSON at line {line} column {col}: "
                                                            "file ends before the closing ']' (truncated?)"))
                return result
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                line, col = _line_col(text, exc.pos)
                result.problems.append(Problem(path, index, f"invalid JSON at line {line} column {col}: {exc.msg}"))
                return result
            _add(result, obj, path, index)
            index += 1
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            line, col = _line_col(text, pos)
            what = "file ends before the closing ']' (truncated?)" if pos >= len(text) else "expected ',' or ']'"
            result.problems.append(Problem(path, index, f"invalid JSON at line {line} column {col}: {what}"))
            return result
        rest = text[pos:].strip()
        if rest:
            line, col = _line_col(text, text.index(rest[0], pos))
            result.problems.append(Problem(path, None, f"invalid JSON at line {line} column {col}: content after "
                                                       "the closing ']' (two lists concatenated?)"))
        return result
    for index, line in enumerate(text.splitlines()):  # JSONL: one record per non-empty line
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            result.problems.append(Problem(path, index, f"invalid JSON at line {index + 1} column {exc.colno}: {exc.msg}"))
            continue
        _add(result, obj, path, index)
    return result


def _add(result: LoadResult, obj, path: str, index: int) -> None:
    """Keep an object record, tagged with where it came from; anything else is a problem at its index."""
    if not isinstance(obj, dict):
        result.problems.append(Problem(path, index, f"record is a {type(obj).__name__}, expected an object"))
        return
    obj = dict(obj)
    obj["_file"], obj["_index"] = path, index
    obj.setdefault("sample_id", f"{Path(path).stem}:{index}")
    result.records.append(obj)


def resolve_media(record: dict, root: str | None, key: str) -> str | None:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        return None
    return value if os.path.isabs(value) or not root else os.path.join(root, value)


def roots_per_file(root, n_files: int, what: str) -> list[str | None]:
    """One root for every file, or one per file (mixing datasets that live in different folders)."""
    if root is None or isinstance(root, str):
        return [root] * n_files
    root = list(root)
    if len(root) == 1:
        return root * n_files
    if len(root) != n_files:
        raise ValueError(f"got {len(root)} {what} values for {n_files} data files: give one, or one per file")
    return root


def anchor_paths(record: dict, image_root: str | None, video_root: str | None) -> dict:
    """The record with its media paths joined to their roots, so later steps need no root."""
    out = dict(record)
    for key, root in (("image", image_root), ("reference", image_root), ("video", video_root)):
        path = resolve_media(out, root, key)
        if path is not None:
            out[key] = path
    return out


def record_media_kind(record: dict) -> str | None:
    rtype = record.get("type")
    spec = TASK_TYPES.get(rtype) if isinstance(rtype, str) else None
    return spec[0] if spec else ("video" if "video" in record else "image" if "image" in record else None)


def check_record(record, image_root: str | None = None, video_root: str | None = None) -> list[str]:
    """Reasons why this record cannot be trained on (empty: fine). Cheap: checks files exist, not their pixels."""
    if not isinstance(record, dict):
        return [f"record is a {type(record).__name__}, expected an object"]
    reasons = []
    rtype = record.get("type")
    if rtype is None:
        return ["missing field 'type'"]
    if not isinstance(rtype, str) or rtype not in TASK_TYPES:
        return [f"unknown type {rtype!r} (known: {', '.join(TASK_TYPES)})"]
    media_key, kind = TASK_TYPES[rtype]
    root = image_root if media_key == "image" else video_root
    path = resolve_media(record, root, media_key)
    if path is None:
        reasons.append(f"missing field '{media_key}' for type {rtype}")
    elif not os.path.isfile(path):
        reasons.append(f"{media_key} file not found: {path}")
    ref = resolve_media(record, image_root, "reference")
    if record.get("reference") is not None and (ref is None or not os.path.isfile(ref)):
        reasons.append(f"reference image not found: {ref or record.get('reference')!r}")
    if "solution" not in record:
        reasons.append("missing field 'solution'")
        return reasons
    sol = record["solution"]
    if kind == "mos":
        value = parse_mos(sol)
        if value is None:
            reasons.append(f"solution {sol!r} is not a number")
        elif not MOS_RANGE[0] <= value <= MOS_RANGE[1]:
            reasons.append(f"solution {value} is outside the MOS range [{MOS_RANGE[0]:g}, {MOS_RANGE[1]:g}]")
    elif kind == "letter":
        options = record.get("options")
        if not isinstance(options, list) or len(options) < 2:
            reasons.append("choice record needs 'options', a list of at least 2 texts")
        elif not (isinstance(sol, str) and len(sol.strip()) == 1 and 0 <= ord(sol.strip().upper()) - 65 < len(options)):
            reasons.append(f"solution {sol!r} is not an option letter A..{chr(64 + len(options))}")
    elif kind == "box":
        if not (isinstance(sol, list) and len(sol) == 4 and all(isinstance(v, (int, float)) for v in sol)
                and sol[0] < sol[2] and sol[1] < sol[3]):
            reasons.append(f"solution {sol!r} is not a box [x1, y1, x2, y2] with x1<x2, y1<y2")
    elif not (isinstance(sol, str) and sol.strip()):
        reasons.append(f"solution {sol!r} should be a non-empty string")
    return reasons


def parse_mos(value) -> float | None:
    """A finite float from a number or numeric string; None otherwise (booleans are not MOS)."""
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def mix(sources: list[list[dict]], weights: list[float] | None, seed: int) -> list[dict]:
    """Concatenate files, each repeated/sub-sampled to round(weight × size) records, deterministically by seed.

    A weight of 2 takes every record twice; 0.5 a seeded random half. The trainer's sampler shuffles the result.
    """
    weights = weights or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise ValueError(f"got {len(weights)} data weights for {len(sources)} data files")
    rng = random.Random(seed)
    out: list[dict] = []
    for records, weight in zip(sources, weights):
        if weight < 0:
            raise ValueError(f"data weight {weight} is negative")
        whole, frac = int(weight), weight - int(weight)
        take = round(frac * len(records))
        picked = [r for _ in range(whole) for r in records] + (rng.sample(records, take) if take else [])
        seen: dict[str, int] = {}
        for rec in picked:  # a repeated record gets its own sample_id, so groups never merge
            sid = str(rec.get("sample_id"))
            seen[sid] = seen.get(sid, 0) + 1
            out.append(rec if seen[sid] == 1 else {**rec, "sample_id": f"{sid}#{seen[sid] - 1}"})
    return out
