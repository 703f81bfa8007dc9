"""Which records an evaluation scores, and the checks that tie predictions.csv rows to them.

Only scoring records are evaluated; every other record is counted. It reads and checks, never decodes media or
writes anything: vqrl.data.checks decodes, predictions.py writes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..data.records import TASK_TYPES, check_record, read_files, to_float
from .predictions import EvalError


@dataclass
class EvalData:
    """Scoring records of every file: the usable ones, the problems of the others, and counts for the report."""

    records: list[dict] = field(default_factory=list)  # passed the field and file checks
    problems: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # dataset -> scoring records skipped for a problem
    every: list[dict] = field(default_factory=list)  # every scoring record, usable or not (for the setup rule)
    reasons: dict = field(default_factory=dict)  # positions in `every` with a problem -> reasons
    per_file: dict = field(default_factory=dict)  # file -> [entries, usable]
    ignored: int = 0  # records of other task types (perception): not scored


def load_eval_records(files, image_root, video_root) -> tuple[list[dict], list[str]]:
    """(usable scoring records, problems as FILE:INDEX: reason lines); see read_eval_data."""
    data = read_eval_data(files, image_root, video_root)
    return data.records, data.problems


def read_eval_data(files, image_root, video_root) -> EvalData:
    """Scoring records of every file, tagged with their dataset (the `dataset` field, else the file's label: its
    stem, or enough of its path to tell same-named files apart) and a unique sample_id."""
    data = EvalData()
    for path, result in zip(files, read_files(files, image_root, video_root)):
        label = result.label
        data.problems += [str(p) for p in result.problems]
        counts = data.per_file.setdefault(path, [0, 0])
        counts[0] += sum(p.index is not None for p in result.problems)
        for rec in result.records:
            rtype = rec.get("type")
            if isinstance(rtype, str) and rtype in TASK_TYPES and TASK_TYPES[rtype][1] != "mos":
                data.ignored += 1
                continue
            rec["dataset"] = str(rec.get("dataset") or label)
            rec["sample_id"] = str(rec["sample_id"])
            counts[0] += 1
            reasons = check_record(rec)
            if reasons:
                data.problems += [f"{path}:{rec.get('_index')}: {r}" for r in reasons]
                data.skipped[rec["dataset"]] += 1
                data.reasons[len(data.every)] = reasons
            else:
                rec["_pos"] = len(data.every)
                data.records.append(rec)
                counts[1] += 1
            data.every.append(rec)
    return data


def refuse_duplicate_ids(records: list[dict]) -> None:
    """Predictions are keyed by sample_id: two records with one id would leave one row for both."""
    where: dict[str, list[str]] = defaultdict(list)
    for r in records:
        where[r["sample_id"]].append(f"{r['_file']}:{r['_index']}")
    dup = {sid: at for sid, at in where.items() if len(at) > 1}
    if dup:
        shown = "; ".join(f"{sid!r} at {', '.join(at)}" for sid, at in list(dup.items())[:5])
        raise EvalError(f"{len(dup)} sample_id(s) repeated in the evaluation data ({shown}): predictions are keyed "
                        "by sample_id, so each record needs its own; give them distinct sample_ids")


def refuse_stale_rows(done: dict[str, dict], records: list[dict], pred_path: str) -> None:
    """A resumed row must belong to the same record: same media path and MOS."""
    for r in records:
        row = done.get(r["sample_id"])
        if row is None:
            continue
        path = r.get(TASK_TYPES[r["type"]][0])
        if row["path"] != str(path) or not math.isclose(float(row["mos"]), to_float(r["solution"]), abs_tol=1e-9):
            raise EvalError(f"{pred_path}: the row for sample {r['sample_id']!r} is for {row['path']} (MOS "
                            f"{row['mos']}), but the data now says {path} (MOS {r['solution']}): the data changed "
                            "since; use another --out, or --overwrite to start over")
