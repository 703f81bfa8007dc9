"""Records: load the seed's JSON list format (and JSONL), check each record, mix files with weights, seeded.

Only plain data lives here (paths, MOS, perception fields); decoding pixels is media.py's job, prompts prompts.py's.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

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
# A decimal number as text: ASCII digits only (Python's float() also takes "٣.٥", "1e3" and "1_0"; a record must not).
DECIMAL = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DECIMAL = re.compile(DECIMAL)
MAX_NUMBER_CHARS = 64
PERCEPTION_FIELDS = ("options", "distortion", "severity", "bbox", "reference", "mode", "dataset")
MOS_RANGE = (1.0, 5.0)
# Columns of a training row beside the prompt (data.dataset.RowBuilder makes them); TRL hands every reward function
# each of them as a keyword argument.
REWARD_COLUMNS = ("solution", "type", "sample_id", "image_path", "video_path") + PERCEPTION_FIELDS


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
    file: str = ""
    label: str = ""  # the file's short name: default sample ids and dataset names (file_labels)

    @property
    def entries(self) -> int:
        """Entries of the file: its records plus the ones that did not parse (the base of the bad-share rules)."""
        return len(self.records) + sum(p.index is not None for p in self.problems)


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def file_labels(paths) -> list[str]:
    """A short, unique name per data file, for default sample ids and dataset names: the file's stem, or where two
    files share a stem (koniq/train.json, spaq/train.json) as many trailing folders as tell them apart (koniq/train,
    spaq/train); a file listed twice gets #2, #3. Depends only on the list of files, so it is stable across runs."""
    parts = [Path(os.path.abspath(str(p))).with_suffix("").parts[1:] for p in paths]
    labels = []
    for i, own in enumerate(parts):
        k = 1
        while k < len(own) and any(other[-k:] == own[-k:] for other in parts if other != own):
            k += 1
        labels.append("/".join(own[-k:]))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels


def read_records(path: str | os.PathLike, label: str | None = None) -> LoadResult:
    """Parse a JSON list or JSONL file record by record, so one broken record does not hide the others.

    Records without a `sample_id` get `LABEL:INDEX`; LABEL defaults to the file's stem (see `file_labels` for
    several files)."""
    path = str(path)
    label = label or Path(path).stem
    result = LoadResult(file=path, label=label)
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
    if stripped[0] == "{" and (wrapped := _wrapped_list(text, path)) is not None:
        result.problems.append(wrapped)
        return result
    if stripped[0] == "[":  # a JSON list, parsed item by item so a truncated tail still reports its index
        pos, index = text.index("[") + 1, 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == "]" and index == 0:
                result.problems.append(Problem(path, None, "the list holds no records ([])"))
                return result
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
            _add(result, obj, path, index, label)
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
        _add(result, obj, path, index, label)
    return result


def _wrapped_list(text: str, path: str) -> Problem | None:
    """A file that is one JSON object spanning several lines is not JSONL: say what it is instead of reporting
    every line as broken JSON (e.g. `{"data": [...]}`, the records wrapped in an object)."""
    if "\n" not in text.strip():
        return None  # one line: a one-record JSONL file
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None  # JSONL (several objects) or broken JSON: the line-by-line reader reports it
    if not isinstance(obj, dict):
        return None
    lists = [k for k, v in obj.items() if isinstance(v, list)]
    if lists and not any(k in obj for k in ("type", "image", "video", "solution")):
        key = lists[0]
        return Problem(path, None, f"the file is one JSON object holding a list under {key!r}, not a list of records: "
                                   f"vqrl reads a JSON list of records or JSONL (one record per line); save the list "
                                   f"itself (e.g. jq '.{key}' {os.path.basename(path)})")
    return Problem(path, None, "the file is one JSON object spread over several lines: JSONL needs one record per "
                               "line; for a JSON list wrap the records in [ ]")


def _add(result: LoadResult, obj, path: str, index: int, label: str) -> None:
    """Keep an object record, tagged with where it came from; anything else is a problem at its index."""
    if not isinstance(obj, dict):
        result.problems.append(Problem(path, index, f"record is a {type(obj).__name__}, expected an object"))
        return
    obj = dict(obj)
    obj["_file"], obj["_index"] = path, index
    if obj.get("sample_id") is None:
        obj["sample_id"] = f"{label}:{index}"
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


def read_files(files, image_root=None, video_root=None) -> list[LoadResult]:
    """Every data file read (read_records, labelled by file_labels), its records' media paths joined to the file's
    roots (one root for all files, or one per file): what training, `vqrl validate-data` and `vqrl eval` all start
    from. One LoadResult per file, in order; it checks nothing beyond the JSON (check_record does)."""
    roots = zip(roots_per_file(image_root, len(files), "image_root"),
                roots_per_file(video_root, len(files), "video_root"))
    out = []
    for path, label, (iroot, vroot) in zip(files, file_labels(files), roots):
        result = read_records(path, label)
        result.records = [anchor_paths(rec, iroot, vroot) for rec in result.records]
        out.append(result)
    return out


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
    for key in (media_key, "reference"):
        if (wrong := _not_a_path(record, key)) is not None:
            reasons.append(wrong)
    if path is None:
        if record.get(media_key) is None or record.get(media_key) == "":
            reasons.append(f"missing field '{media_key}' for type {rtype}")
    elif not os.path.isfile(path):
        reasons.append(f"{media_key} file not found: {path}")
    ref = resolve_media(record, image_root, "reference")
    if ref is not None and not os.path.isfile(ref):
        reasons.append(f"reference image not found: {ref}")
    if "solution" not in record:
        reasons.append("missing field 'solution'")
        return reasons
    sol = record["solution"]
    if kind == "mos":
        value = to_float(sol)
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


def _not_a_path(record: dict, key: str) -> str | None:
    """Why record[key] is not a usable path (None when it is a path or absent)."""
    value = record.get(key)
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, list):
        return (f"field '{key}' is a list of {len(value)}; a record takes one {key} path (a string): write one "
                f"record per file")
    return f"field '{key}' must be a path (a string), got {type(value).__name__} {value!r}"


def to_float(value) -> float | None:
    """A finite float from a number or a decimal string (`4.40`, ` 3 `, `-.5`); None for anything else: booleans,
    NaN, infinities, exponents, labels and non-ASCII digits. The one rule for every number a record holds (MOS,
    severity, box coordinates), so that validation, training rows and rewards read them alike."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        try:
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
    elif isinstance(value, str) and len(value) <= MAX_NUMBER_CHARS and _DECIMAL.fullmatch(value.strip()):
        out = float(value.strip())
    else:
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
    taken: set[str] = set()
    first_owner: dict[str, dict] = {}
    clashes: dict[int, dict] = {}  # records whose sample_id another record already had (weight repeats are not)
    for records, weight in zip(sources, weights):
        if weight < 0:
            raise ValueError(f"data weight {weight} is negative")
        whole, frac = int(weight), weight - int(weight)
        take = round(frac * len(records))
        picked = [r for _ in range(whole) for r in records] + (rng.sample(records, take) if take else [])
        for rec in picked:  # every row gets its own sample_id, so prompts and groups are never confused
            sid = str(rec.get("sample_id"))
            owner = first_owner.setdefault(sid, rec)
            if owner is not rec:
                clashes.setdefault(id(rec), rec)
            new, k = sid, 0
            while new in taken:
                k += 1
                new = f"{sid}#{k}"
            taken.add(new)
            out.append(rec if new == sid else {**rec, "sample_id": new})
    if clashes:
        rec = next(iter(clashes.values()))
        owner = first_owner[str(rec.get("sample_id"))]
        logger.warning("%d record(s) share their sample_id with another record (first: %r at %s:%s and %s:%s); each "
                       "row was given a distinct id (suffix #N)", len(clashes), rec.get("sample_id"),
                       owner.get("_file"), owner.get("_index"), rec.get("_file"), rec.get("_index"))
    return out
