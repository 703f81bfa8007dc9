"""`vqrl convert`: turn the official label files of public IQA/VQA sets into vqrl scoring records (MOS on [1,5]).

Must not guess silently: every rescale rule and raw value is kept in the record's `meta`; it never edits, moves or
needs the media files (paths are written as they sit in the official archive layout, relative to --root).
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

__all__ = ["CONVERTERS", "ALIASES", "SPLITS", "ConversionError", "Scale", "convert", "scoring_record", "write_records",
           "add_arguments", "run"]


class ConversionError(Exception):
    """A problem with the dataset on disk (missing file, column, unreadable value): one line, says what to fix."""


@dataclass(frozen=True)
class Scale:
    """Linear map from a set's nominal range to [1, 5]; `invert` for DMOS-like labels where lower is better."""

    lo: float
    hi: float
    invert: bool = False
    note: str = ""

    def __call__(self, raw: float) -> tuple[float, bool]:
        """(value on [1,5] rounded to 4 places, clipped?). Values past the nominal range are clipped, not dropped:
        records must pass `vqrl validate-data`, and the raw value stays in meta."""
        t = (raw - self.lo) / (self.hi - self.lo)
        value = 5.0 - 4.0 * t if self.invert else 1.0 + 4.0 * t
        clipped = not 1.0 <= value <= 5.0
        return round(min(5.0, max(1.0, value)), 4), clipped

    @property
    def rule(self) -> str:
        lo, hi = f"{self.lo:g}", f"{self.hi:g}"
        text = f"inverted linear [{lo},{hi}]->[5,1]" if self.invert else f"linear [{lo},{hi}]->[1,5]"
        return f"{text} ({self.note})" if self.note else text


# ----------------------------------------------------------------------------------------------------------- helpers


def _missing(name: str, root: Path, candidates: Iterable[str]) -> ConversionError:
    candidates = list(candidates)
    also = f" (also looked for {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
    return ConversionError(f"{name}: label file not found: expected {root / candidates[0]}{also}")


def _find(name: str, root: Path, candidates: Iterable[str]) -> Path:
    """The first candidate label file that exists under root (archives unpack with or without a top folder)."""
    candidates = list(candidates)
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise _missing(name, root, candidates)


def _rel(path: Path, root: Path) -> str:
    return PurePosixPath(*path.relative_to(root).parts).as_posix() if path != root else "."


def _join(*parts: str) -> str:
    """A relative posix path from parts, ignoring empty ones and '.'."""
    return PurePosixPath(*[p for p in parts if p and p != "."]).as_posix()


_CASE_CACHE: dict[str, dict[str, str]] = {}


def _case_index(directory: Path) -> dict[str, str]:
    key = str(directory)
    if key not in _CASE_CACHE:
        _CASE_CACHE[key] = {p.name.lower(): p.name for p in directory.iterdir()} if directory.is_dir() else {}
    return _CASE_CACHE[key]


def _media(root: Path, dirs: Iterable[str], name: str) -> str:
    """Path of `name` relative to root, looked up in `dirs` in order, case-insensitively (label files and
    archives disagree on case, e.g. TID2013). With no match, the first dir joined with the name as written."""
    dirs = list(dirs)
    for d in dirs:
        if (root / d / name).is_file():
            return _join(d, name)
        actual = _case_index(root / d).get(name.lower())
        if actual is not None:
            return _join(d, actual)
    return _join(dirs[0], name)


def _pick_dir(root: Path, candidates: Iterable[str], probe: str | None = None) -> str:
    """The media folder: the first candidate holding `probe`, else the first that exists, else the first named."""
    candidates = list(candidates)
    if probe:
        for d in candidates:
            if (root / d / probe).is_file() or probe.lower() in _case_index(root / d):
                return d
    for d in candidates:
        if (root / d).is_dir():
            return d
    return candidates[0]


def _float(value, where: str) -> float:
    try:
        out = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except (TypeError, ValueError):
        raise ConversionError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(out) or isinstance(value, bool):
        raise ConversionError(f"{where}: {value!r} is not a finite number")
    return out


def _read_csv(path: Path) -> list[dict]:
    """Rows as dicts with stripped header names; tolerates a UTF-8 BOM and quoted headers."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ConversionError(f"{path}: file is empty")
        reader.fieldnames = [(h or "").strip() for h in reader.fieldnames]
        return [row for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]


def _column(rows: list[dict], path: Path, *names: str) -> str:
    """The actual header matching one of `names` (case-insensitive), or a clear error naming the file."""
    headers = list(rows[0].keys()) if rows else []
    lower = {h.lower(): h for h in headers}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    raise ConversionError(f"{path}: no column {names[0]!r} (columns: {', '.join(headers) or 'none'})")


def _openpyxl():
    try:
        import openpyxl
    except ImportError:
        raise ConversionError("reading .xlsx label files needs openpyxl: pip install openpyxl "
                              "(or pip install 'vqrl[convert]')") from None
    return openpyxl


def _xlsx_rows(path: Path, sheet: str | None = None) -> list[tuple]:
    openpyxl = _openpyxl()
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # a corrupt or non-xlsx file: one line, not a zipfile traceback
        raise ConversionError(f"{path}: cannot read as .xlsx: {exc}") from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise ConversionError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(book.sheetnames)})")
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        # read-only mode trusts the sheet's stored size (<dimension>), which some writers get wrong (A1 only): a
        # table would read as one cell. Forget it and read the rows that are there.
        ws.reset_dimensions()
        return [tuple(r) for r in ws.iter_rows(values_only=True)]
    finally:
        book.close()


def _xlsx_table(path: Path, required: tuple[str, ...], sheet: str | None = None) -> list[dict]:
    """Rows under the first row that holds all `required` headers, keyed by lower-cased header (official sheets
    may have title rows above the header and columns that do not start at A)."""
    rows = _xlsx_rows(path, sheet)
    for i, row in enumerate(rows):
        cells = [str(c).strip().lower() if c is not None else "" for c in row]
        if all(r.lower() in cells for r in required):
            header = cells
            out = []
            for r in rows[i + 1:]:
                rec = {h: v for h, v in zip(header, r) if h}
                if all(v is None or (isinstance(v, str) and not v.strip()) for v in rec.values()):
                    continue  # padding rows
                out.append(rec)
            return out
    where = f" sheet {sheet!r}" if sheet else ""
    raise ConversionError(f"{path}{where}: no header row with columns {', '.join(map(repr, required))}")


def _loadmat_var(path: Path, key: str):
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except Exception as exc:
        raise ConversionError(f"{path}: cannot read as a MATLAB .mat file: {exc}") from None
    if key not in data:
        found = ", ".join(k for k in data if not k.startswith("__"))
        raise ConversionError(f"{path}: no variable {key!r} (variables: {found or 'none'})")
    return data[key]


def _mat_strings(arr) -> list[str]:
    """Names from a MATLAB cell array of strings (object array of 1-element arrays) or a char matrix."""
    import numpy as np

    arr = np.asarray(arr)
    out = []
    for item in arr.ravel():
        while isinstance(item, np.ndarray):
            if item.size == 0:
                item = ""
                break
            item = item.ravel()[0] if item.dtype == object or item.size == 1 else "".join(item.ravel().tolist())
        out.append(str(item).strip())
    return out


def _name_str(value) -> str:
    """A spreadsheet cell holding a file stem: 1600 (read as a number) -> '1600'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def scoring_record(dataset: str, path: str, raw: float, scale: Scale, source: str, video: bool = False,
                   **meta) -> dict:
    """One scoring record: `path` (relative to --root), the MOS `raw` rescaled by `scale`, and in `meta` the raw value,
    the rule, the label file it came from (`source`) and any other facts given (None ones left out)."""
    value, clipped = scale(raw)
    info = {"dataset": dataset, "mos_raw": raw, "rule": scale.rule, "source": source}
    if clipped:
        info["clipped"] = True
    info.update({k: v for k, v in meta.items() if v is not None})
    kind = "video" if video else "image"
    return {kind: path, "solution": value, "type": f"scoring_{kind}", "dataset": dataset, "meta": info}


def _no_split(name: str, split: str | None) -> None:
    if split is not None:
        raise ConversionError(f"{name} has no official split; omit --split to convert all of it")


# -------------------------------------------------------------------------------------------------------- converters

KONIQ_SCALE = Scale(1, 5)
SPAQ_SCALE = Scale(0, 100)
LIVEC_SCALE = Scale(0, 100)
KADID_SCALE = Scale(1, 5, note="KADID 'dmos' is quality-oriented: higher is better, so not inverted")
AGIQA3K_SCALE = Scale(0, 5)
CSIQ_SCALE = Scale(0, 1, invert=True, note="DMOS: lower is better")
TID2013_SCALE = Scale(0, 9)
LSVQ_SCALE = Scale(0, 100)
KONVID_SCALE = Scale(1, 5)

LIVEC_TRAINING_IMAGES = 7  # t1.bmp..t7.bmp: shown to raters as training, not part of the 1162-image test set

# the archive koniq10k_1024x768.zip unpacks to koniq10k_1024x768/1024x768/ when extracted into a folder of its name
KONIQ_IMAGE_DIRS = ["1024x768", "512x384", "koniq10k_1024x768/1024x768", "koniq10k_512x384/512x384"]
KONIQ_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation",
                "test": "test"}


def convert_koniq(root: Path, split: str | None = None) -> list[dict]:
    """KonIQ-10k: MOS (1-5, from 5-point ACR) of koniq10k_scores_and_distributions.csv; the official split comes from
    koniq10k_distributions_sets.csv (whose own 'MOS' column is on the 1-100 z-score scale, so it is not used)."""
    scores = _find("KonIQ-10k", root, ["koniq10k_scores_and_distributions.csv",
                                       "koniq10k_scores_and_distributions/koniq10k_scores_and_distributions.csv"])
    sets_candidates = ["koniq10k_distributions_sets.csv", "metadata/koniq10k_distributions_sets.csv"]
    want = None
    if split is not None:
        if split not in KONIQ_SPLITS:
            raise ConversionError(f"KonIQ-10k split {split!r} unknown; choose train, val or test")
        want = KONIQ_SPLITS[split]
    set_of: dict[str, str] = {}
    try:
        sets_path = _find("KonIQ-10k", root, sets_candidates)
    except ConversionError:
        if want is not None:
            raise ConversionError(f"KonIQ-10k: --split needs the official split file: expected "
                                  f"{root / sets_candidates[0]} (github.com/subpic/koniq, metadata/)") from None
        sets_path = None
    if sets_path is not None:
        rows = _read_csv(sets_path)
        name_col, set_col = _column(rows, sets_path, "image_name"), _column(rows, sets_path, "set")
        set_of = {r[name_col].strip(): r[set_col].strip() for r in rows}
    rows = _read_csv(scores)
    name_col, mos_col = _column(rows, scores, "image_name"), _column(rows, scores, "MOS")
    z_col = next((h for h in (rows[0] if rows else {}) if h.lower() == "mos_zscore"), None)
    first = rows[0][name_col].strip() if rows else None
    img_dir = _pick_dir(root, KONIQ_IMAGE_DIRS, first)
    out = []
    for i, r in enumerate(rows):
        name = r[name_col].strip()
        s = set_of.get(name)
        if want is not None and s != want:
            continue
        raw = _float(r[mos_col], f"{scores}:{i + 2} MOS")
        z = _float(r[z_col], f"{scores}:{i + 2} MOS_zscore") if z_col and r.get(z_col, "").strip() else None
        out.append(scoring_record("koniq", _join(img_dir, name), raw, KONIQ_SCALE, _rel(scores, root),
                                  mos_zscore=z, split=s))
    return out


def convert_spaq(root: Path, split: str | None = None) -> list[dict]:
    """SPAQ: 'MOS' (0-100 slider) of Annotations/MOS and Image attribute scores.xlsx; images in TestImage/."""
    _no_split("SPAQ", split)
    path = _find("SPAQ", root, ["Annotations/MOS and Image attribute scores.xlsx",
                                "MOS and Image attribute scores.xlsx"])
    rows = _xlsx_table(path, ("Image name", "MOS"))
    img_dir = _pick_dir(root, ["TestImage", "TestImages"], _name_str(rows[0]["image name"]) if rows else None)
    out = []
    for r in rows:
        if r.get("image name") is None:
            continue
        name = _name_str(r["image name"])
        raw = _float(r["mos"], f"{path} MOS of {name}")
        out.append(scoring_record("spaq", _join(img_dir, name), raw, SPAQ_SCALE, _rel(path, root)))
    return out


def convert_livec(root: Path, split: str | None = None) -> list[dict]:
    """LIVE Challenge (CLIVE, LIVE in the Wild): Data/AllMOS_release.mat (0-100) and Data/AllImages_release.mat,
    images in Images/. The first 7 entries are the study's training images and are dropped, as everyone does."""
    _no_split("LIVE Challenge", split)
    mos_path = _find("LIVE Challenge", root, ["Data/AllMOS_release.mat"])
    names_path = _find("LIVE Challenge", root, ["Data/AllImages_release.mat"])
    import numpy as np

    mos = np.asarray(_loadmat_var(mos_path, "AllMOS_release"), dtype=float).ravel()
    names = _mat_strings(_loadmat_var(names_path, "AllImages_release"))
    if len(names) != len(mos):
        raise ConversionError(f"{names_path} lists {len(names)} images but {mos_path} has {len(mos)} MOS values")
    out = []
    for i, (name, raw) in enumerate(zip(names, mos)):
        if i < LIVEC_TRAINING_IMAGES:
            continue
        raw = _float(raw, f"{mos_path} entry {i}")
        out.append(scoring_record("livec", _media(root, ["Images"], name), raw, LIVEC_SCALE, _rel(mos_path, root)))
    return out


def convert_kadid(root: Path, split: str | None = None) -> list[dict]:
    """KADID-10k: dmos.csv (dist_img, ref_img, dmos, var). Despite the name, 'dmos' is the mean of 5-point
    degradation-category ratings (5 = imperceptible), so higher is better and it is not inverted."""
    _no_split("KADID-10k", split)
    path = _find("KADID-10k", root, ["dmos.csv", "kadid10k/dmos.csv"])
    base = _rel(path.parent, root)
    rows = _read_csv(path)
    dist, ref = _column(rows, path, "dist_img"), _column(rows, path, "ref_img")
    val = _column(rows, path, "dmos")
    var = next((h for h in (rows[0] if rows else {}) if h.lower() == "var"), None)
    out = []
    for i, r in enumerate(rows):
        raw = _float(r[val], f"{path}:{i + 2} dmos")
        out.append(scoring_record("kadid", _join(base, "images", r[dist].strip()), raw, KADID_SCALE, _rel(path, root),
                                  reference=_join(base, "images", r[ref].strip()),
                                  var=_float(r[var], f"{path}:{i + 2} var") if var and r.get(var, "").strip()
                                  else None))
    return out


def convert_agiqa3k(root: Path, split: str | None = None) -> list[dict]:
    """AGIQA-3K: data.csv (name, prompt, ..., mos_quality, std_quality, mos_align, std_align); perceptual quality
    'mos_quality' is used (0-5 nominal), the alignment MOS is kept in meta."""
    _no_split("AGIQA-3K", split)
    path = _find("AGIQA-3K", root, ["data.csv", "AGIQA-3K/data.csv"])
    rows = _read_csv(path)
    name, mos = _column(rows, path, "name"), _column(rows, path, "mos_quality")
    align = next((h for h in (rows[0] if rows else {}) if h.lower() == "mos_align"), None)
    prompt = next((h for h in (rows[0] if rows else {}) if h.lower() == "prompt"), None)
    base = _rel(path.parent, root)
    img_dir = _pick_dir(root / base, ["AGIQA-3K", "AGIQA-3k", "images", "."], rows[0][name].strip() if rows else None)
    out = []
    for i, r in enumerate(rows):
        raw = _float(r[mos], f"{path}:{i + 2} mos_quality")
        a = _float(r[align], f"{path}:{i + 2} mos_align") if align and r.get(align, "").strip() else None
        out.append(scoring_record("agiqa3k", _join(base, img_dir, r[name].strip()), raw, AGIQA3K_SCALE,
                                  _rel(path, root), mos_align=a,
                                  prompt=(r.get(prompt) or "").strip() if prompt else None))
    return out


PIPAL_DIS_DIRS = ["Train_Dis", "Distortion_1", "Distortion_2", "Distortion_3", "Distortion_4", "Dist_Imgs"]
PIPAL_REF_DIRS = ["Train_Ref", "Ref_Imgs"]


def convert_pipal(root: Path, split: str | None = None) -> list[dict]:
    """PIPAL (training labels): Train_Label/A0001.txt ... with 'A0001_00_00.bmp,1520.0648' lines (Elo scores).
    Elo has no nominal range, so the observed min and max over all label files map to 1 and 5 (written in the rule)."""
    _no_split("PIPAL", split)
    label_dir = root / "Train_Label"
    files = sorted(label_dir.glob("*.txt")) if label_dir.is_dir() else []
    if not files:
        raise ConversionError(f"PIPAL: label files not found: expected {label_dir / 'A0001.txt'} (Train_Label/*.txt)")
    entries = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            parts = [p.strip() for p in re.split(r"[,\s]+", line.strip()) if p.strip()]
            if len(parts) != 2:
                raise ConversionError(f"{path}:{n}: expected 'NAME.bmp,SCORE', got {line.strip()!r}")
            entries.append((path, parts[0], _float(parts[1], f"{path}:{n}")))
    lo, hi = min(e[2] for e in entries), max(e[2] for e in entries)
    if hi <= lo:
        raise ConversionError(f"PIPAL: all Elo scores equal ({lo:g}); cannot rescale")
    scale = Scale(round(lo, 4), round(hi, 4), note="PIPAL Elo: observed min/max of the converted label files")
    out = []
    for path, name, raw in entries:
        ref = name.split("_")[0] + Path(name).suffix
        out.append(scoring_record("pipal", _media(root, PIPAL_DIS_DIRS, name), raw, scale, _rel(path, root),
                                  reference=_media(root, PIPAL_REF_DIRS, ref)))
    return out


# CSIQ's workbook names distortions one way, its folders another and its file names a third.
CSIQ_DISTORTIONS = {"noise": ("awgn", "AWGN"), "awgn": ("awgn", "AWGN"), "jpeg": ("jpeg", "JPEG"),
                    "jpeg 2000": ("jpeg2000", "jpeg2000"), "jpeg2000": ("jpeg2000", "jpeg2000"),
                    "fnoise": ("fnoise", "fnoise"), "blur": ("blur", "BLUR"), "contrast": ("contrast", "contrast")}


def convert_csiq(root: Path, split: str | None = None) -> list[dict]:
    """CSIQ: csiq.DMOS.xlsx, sheet all_by_image (header row image, dst_idx, dst_type, dst_lev, dmos_std, dmos below
    title rows); DMOS on 0-1 with lower = better, inverted. Images dst_imgs/<folder>/<image>.<TOKEN>.<lev>.png."""
    _no_split("CSIQ", split)
    path = _find("CSIQ", root, ["csiq.DMOS.xlsx", "CSIQ/csiq.DMOS.xlsx"])
    base = _rel(path.parent, root)
    rows = _xlsx_table(path, ("image", "dst_type", "dst_lev", "dmos"), sheet="all_by_image")
    out = []
    for i, r in enumerate(rows):
        if r.get("image") is None:
            continue
        image, dtype = _name_str(r["image"]), str(r["dst_type"]).strip().lower()
        if dtype not in CSIQ_DISTORTIONS:
            raise ConversionError(f"{path}: unknown dst_type {r['dst_type']!r} for image {image}")
        folder, token = CSIQ_DISTORTIONS[dtype]
        level = int(_float(r["dst_lev"], f"{path} all_by_image {image} dst_lev"))
        fname = f"{image}.{token}.{level}.png"
        rel = _media(root / base, [f"dst_imgs/{folder}", "dst_imgs", "dst_imgs_all"], fname)
        raw = _float(r["dmos"], f"{path} all_by_image {fname} dmos")
        std = r.get("dmos_std")
        out.append(scoring_record("csiq", _join(base, rel), raw, CSIQ_SCALE, _rel(path, root),
                                  reference=_join(base, "src_imgs", f"{image}.png"),
                                  distortion=str(r["dst_type"]).strip(),
                                  level=level, dmos_std=float(std) if isinstance(std, (int, float)) else None))
    return out


def convert_tid2013(root: Path, split: str | None = None) -> list[dict]:
    """TID2013: mos_with_names.txt ('5.51429 i01_01_1.bmp'), MOS 0-9 (observed ~0.2-7.2). Names in the file and on
    disk disagree in case (I01_01_1.bmp vs i01_01_1.bmp, .BMP vs .bmp), so names resolve case-insensitively."""
    _no_split("TID2013", split)
    path = _find("TID2013", root, ["mos_with_names.txt", "tid2013/mos_with_names.txt"])
    base = _rel(path.parent, root)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ConversionError(f"{path}:{n}: expected 'MOS NAME', got {line.strip()!r}")
        raw, name = _float(parts[0], f"{path}:{n}"), parts[1]
        ref = f"I{name[1:3]}.BMP"
        out.append(scoring_record("tid2013", _join(base, _media(root / base, ["distorted_images"], name)), raw,
                                  TID2013_SCALE, _rel(path, root),
                                  reference=_join(base, _media(root / base, ["reference_images"], ref)), name=name))
    return out


def _truthy(value: str, where: str) -> bool:
    v = str(value).strip().lower()
    if v in ("true", "1", "1.0", "yes"):
        return True
    if v in ("false", "0", "0.0", "no", ""):
        return False
    raise ConversionError(f"{where}: is_test value {value!r} is not true/false")


LSVQ_SPLITS = ("train", "test", "test_1080p")
VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def _video_name(name: str) -> str:
    return name if name.lower().endswith(VIDEO_EXTS) else name + ".mp4"


def convert_lsvq(root: Path, split: str | None = None) -> list[dict]:
    """LSVQ: labels_train_test.csv (name, ..., mos, is_test) and labels_test_1080p.csv; MOS 0-100; 'name' is
    'batch/id' without extension and the video is <name>.mp4. Without --split all three parts are converted."""
    if split is not None and split not in LSVQ_SPLITS:
        raise ConversionError(f"LSVQ split {split!r} unknown; choose {', '.join(LSVQ_SPLITS)}")
    out = []
    if split in (None, "train", "test"):
        path = _find("LSVQ", root, ["labels_train_test.csv"])
        rows = _read_csv(path)
        name, mos, is_test = (_column(rows, path, "name"), _column(rows, path, "mos"),
                              _column(rows, path, "is_test"))
        for i, r in enumerate(rows):
            part = "test" if _truthy(r[is_test], f"{path}:{i + 2}") else "train"
            if split is not None and part != split:
                continue
            raw = _float(r[mos], f"{path}:{i + 2} mos")
            out.append(scoring_record("lsvq", _video_name(r[name].strip()), raw, LSVQ_SCALE, _rel(path, root),
                                      video=True, split=part))
    if split in (None, "test_1080p"):
        path = _find("LSVQ", root, ["labels_test_1080p.csv"])
        rows = _read_csv(path)
        name, mos = _column(rows, path, "name"), _column(rows, path, "mos")
        for i, r in enumerate(rows):
            raw = _float(r[mos], f"{path}:{i + 2} mos")
            out.append(scoring_record("lsvq", _video_name(r[name].strip()), raw, LSVQ_SCALE, _rel(path, root),
                                      video=True, split="test_1080p"))
    return out


KONVID_LABELS = [f"{d}{name}" for name in ("KoNViD_1k_mos.csv", "KoNViD_1k_attributes.csv")
                 for d in ("", "KoNViD_1k_metadata/", "KoNViD_1k_videos/")]


def convert_konvid(root: Path, split: str | None = None) -> list[dict]:
    """KoNViD-1k: KoNViD_1k_mos.csv (flickr_id, mos) or, where only it was kept, KoNViD_1k_attributes.csv (flickr_id,
    file_name, MOS, ...); in --root, KoNViD_1k_metadata/ or beside the videos. MOS 1-5; videos
    KoNViD_1k_videos/<flickr_id>.mp4 (or the attributes' file_name where only that file exists)."""
    _no_split("KoNViD-1k", split)
    path = _find("KoNViD-1k", root, KONVID_LABELS)
    rows = _read_csv(path)
    fid, mos = _column(rows, path, "flickr_id"), _column(rows, path, "mos")
    file_col = next((h for h in (rows[0] if rows else {}) if h.lower() == "file_name"), None)
    out = []
    for i, r in enumerate(rows):
        vid = _name_str(r[fid])
        vid = vid[:-2] if vid.endswith(".0") else vid  # ids re-saved through a spreadsheet come back as floats
        raw = _float(r[mos], f"{path}:{i + 2} mos")
        video = _media(root, ["KoNViD_1k_videos"], _video_name(vid))
        if file_col and (r.get(file_col) or "").strip() and not (root / video).is_file():
            named = _media(root, ["KoNViD_1k_videos"], r[file_col].strip())
            video = named if (root / named).is_file() else video
        out.append(scoring_record("konvid", video, raw, KONVID_SCALE, _rel(path, root), video=True))
    return out


CONVERTERS: dict[str, Callable[..., list[dict]]] = {
    "koniq": convert_koniq,
    "spaq": convert_spaq,
    "livec": convert_livec,
    "kadid": convert_kadid,
    "agiqa3k": convert_agiqa3k,
    "pipal": convert_pipal,
    "csiq": convert_csiq,
    "tid2013": convert_tid2013,
    "lsvq": convert_lsvq,
    "konvid": convert_konvid,
}
ALIASES = {
    "koniq10k": "koniq", "koniq-10k": "koniq", "live-challenge": "livec", "livechallenge": "livec",
    "clive": "livec", "live-itw": "livec", "live-wild": "livec", "kadid10k": "kadid", "kadid-10k": "kadid",
    "agiqa-3k": "agiqa3k", "agiqa": "agiqa3k", "tid": "tid2013", "konvid1k": "konvid", "konvid-1k": "konvid",
}
SPLITS = {"koniq": ("train", "val", "test"), "lsvq": LSVQ_SPLITS}


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key).replace("-", "")
    key = ALIASES.get(key, key)
    if key not in CONVERTERS:
        raise ConversionError(f"unknown dataset {name!r}; choose from {', '.join(CONVERTERS)}")
    return key


def convert(name: str, root: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Records for dataset `name` (a CONVERTERS key or alias) from the official files under `root`."""
    key = canonical_name(name)
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(f"--root {root} is not a directory")
    _CASE_CACHE.clear()  # the tree may have changed since the last call
    records = CONVERTERS[key](root, split)
    if not records:
        raise ConversionError(f"{key}: no records found under {root}" + (f" for split {split!r}" if split else ""))
    return records


def missing_media(records: list[dict], root: str | os.PathLike) -> list[str]:
    """Paths in `records` with no file under root (labels can be converted before the media are unpacked)."""
    root = Path(root)
    return [p for r in records for p in [r.get("image") or r.get("video")] if not (root / p).is_file()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(CONVERTERS)
    parser.add_argument("dataset", help=f"one of: {names} (aliases such as koniq10k, clive, kadid10k work)")
    parser.add_argument("--root", required=True, help="folder where the dataset's official archives were unpacked")
    parser.add_argument("--out", required=True, help="output .json (a list) or .jsonl")
    splits = "; ".join(f"{name} {'|'.join(values)}" for name, values in SPLITS.items())
    parser.add_argument("--split", default=None, help=f"official split where one exists: {splits}")


def _output_path(out: Path) -> Path:
    target = out.resolve() if out.is_symlink() else out
    if target.exists() and not target.is_file():
        raise ConversionError(f"--out {out} is not a regular file (a device, pipe or folder): give a file path")
    return target


def write_records(records: list[dict], out: str | os.PathLike) -> Path:
    """Write records as JSON (a list) or JSONL (by suffix) through a temporary file renamed over `out`, so a failed
    write leaves no half file. Only a regular file (or a new one) is written: a device such as /dev/full, a pipe
    or a folder is refused rather than replaced by a file. A symlink writes to its target."""
    out = Path(out)
    target = _output_path(out)
    tmp = target.with_name(target.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            if target.suffix.lower() == ".jsonl":
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            else:
                json.dump(records, f, ensure_ascii=False, indent=1)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # never leave a half-written file under the final name
    except OSError as exc:
        if tmp.exists():
            tmp.unlink()
        reason = "no space left on device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
        raise ConversionError(f"cannot write {out}: {reason}") from None
    return out


def run(args: argparse.Namespace) -> int:
    try:
        _output_path(Path(args.out))  # before reading anything
        records = convert(args.dataset, args.root, args.split)
        out = write_records(records, args.out)
    except ConversionError as exc:
        print(f"vqrl convert: error: {exc}", file=sys.stderr)
        return 2
    clipped = sum(1 for r in records if r["meta"].get("clipped"))
    print(f"wrote {len(records)} records to {out} ({records[0]['dataset']}; {records[0]['meta']['rule']}"
          + (f"; {clipped} clipped to [1,5]" if clipped else "") + ")")
    missing = missing_media(records, args.root)
    if missing:
        print(f"warning: {len(missing)} of {len(records)} media files not found under {args.root} "
              f"(first: {missing[0]}); `vqrl validate-data` will report them", file=sys.stderr)
    return 0
