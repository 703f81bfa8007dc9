"""predictions.csv and settings.json: the resumable record of one evaluation, and the settings that made it.

Rows are appended a batch at a time in one write, cut back to the last whole row when a write fails (a full disk),
and read back tolerantly (a row cut by a crash is dropped and predicted again). A resume is allowed only under the
settings that made the rows. It must never leave a file that a later run cannot read, nor mix two models' rows.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os

FIELDS = ["sample_id", "dataset", "path", "mos", "prediction", "completion", "error"]
PREDICTIONS = "predictions.csv"
SETTINGS = "settings.json"


class EvalError(Exception):
    """A problem the user must fix, as one line (exit 2, no traceback)."""


def disk_error(exc: OSError, path: str, kept: str = "") -> EvalError:
    """An OSError while writing, said plainly: 'no space left on device' rather than a traceback."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EvalError(f"no space left on device writing {path}{kept}; free some space and run the same command "
                         "again to resume")
    return EvalError(f"cannot write {path}: {exc.strerror or exc}{kept}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append(path: str, rows: list[dict]) -> None:
    """Append rows (and the header to a new or empty file) in one write; on failure cut the file back, so it
    ends with a whole row, and raise EvalError."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)  # \r\n rows: a \r or \n inside a completion gets quoted
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = os.fstat(fd).st_size
        if start == 0:
            writer.writeheader()
        writer.writerows(rows)
        try:
            _write_all(fd, buf.getvalue().encode("utf-8"))
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, start)
            raise disk_error(exc, path, "; the predictions written before are kept" if start else "") from None
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (never half a file)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise disk_error(exc, path) from None


def _valid(row: dict) -> bool:
    if None in row or any(row.get(k) is None for k in FIELDS) or not row["sample_id"]:
        return False  # a field missing (a cut row) or one too many
    try:
        mos = float(row["mos"])
        pred = float(row["prediction"]) if row["prediction"] != "" else 0.0
    except ValueError:
        return False
    return math.isfinite(mos) and math.isfinite(pred)


def read(path: str) -> tuple[dict[str, dict], int]:
    """(rows by sample_id, rows dropped as cut off or invalid). An empty or 0-byte file reads as no rows."""
    if not os.path.exists(path):
        return {}, 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    header = ",".join(FIELDS) + "\r\n"
    if not text.strip() or (len(text) < len(header) and header.startswith(text)):
        return {}, 0  # nothing, or a header cut short: nothing was predicted yet
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames != FIELDS:
        raise EvalError(f"{path} is not a predictions file of this vqrl (columns {reader.fieldnames}, expected "
                        f"{FIELDS}): use another --out, or --overwrite to start over")
    rows, dropped = [], 0
    try:
        for row in reader:
            rows.append(row)
    except csv.Error:  # the file ends inside a quoted field
        dropped += 1
    if rows and not text.endswith("\n") and not dropped:
        rows.pop()  # the last row was cut before its end of line
        dropped += 1
    good = [r for r in rows if _valid(r)]
    dropped += len(rows) - len(good)
    return {r["sample_id"]: r for r in good}, dropped


def rewrite(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def claim(out_dir: str, settings: dict, overwrite: bool = False) -> None:
    """Make `out_dir` hold the predictions of `settings`: a fresh folder gets settings.json; a folder with
    predictions made under other settings (or under unknown ones) is refused, or emptied with overwrite."""
    pred_path, settings_path = os.path.join(out_dir, PREDICTIONS), os.path.join(out_dir, SETTINGS)
    if overwrite:  # metrics.json goes too: it must never describe another model's predictions
        for path in (pred_path, settings_path, os.path.join(out_dir, "metrics.json")):
            if os.path.exists(path):
                os.remove(path)
    has_rows = os.path.exists(pred_path) and os.path.getsize(pred_path) > 0
    if has_rows:
        try:
            with open(settings_path, encoding="utf-8") as f:
                stored = json.load(f)
        except (OSError, ValueError):
            raise EvalError(f"{pred_path} holds predictions but {SETTINGS} beside it is missing or unreadable, so "
                            "they cannot be tied to a model and settings: use another --out, or --overwrite to "
                            "start over") from None
        changed = [f"{k} changed" if isinstance(settings.get(k), dict)
                   else f"{k}: {stored.get(k)!r} -> {settings.get(k)!r}"
                   for k in sorted(set(stored) | set(settings)) if stored.get(k) != settings.get(k)]
        if changed:
            raise EvalError(f"{pred_path} holds predictions made with other settings ({'; '.join(changed)}): they "
                            "cannot be resumed; use another --out, or --overwrite to start over")
        return
    write_atomic(settings_path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
