"""`vqrl make-perception-data`: distort a folder of pristine images into Stage-1 perception records.

Must not depend on worker count, file-system order or wall-clock: every choice comes from (seed, image name,
variant index), so one seed always gives byte-identical files; it must never modify or delete input images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from vqrl.datagen.distortions import COLOUR_ONLY, DISTORTIONS, FAMILIES, apply

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MIN_SIDE = 32  # smaller inputs cannot hold a meaningful box
MIN_CHANGE = 1.0  # mean |difference| (of 255) inside the distorted area below which a variant is re-drawn
MAX_ATTEMPTS = 6
LETTERS = "ABCD"
REGIONS = (
    ("top-left", "top", "top-right"),
    ("left", "center", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)

# Questions say what to judge, not how to format the answer: vqrl.data.prompts adds the answer format, the
# think instruction and, for records with a `reference`, the note that the reference image comes first.
SCORING_QUESTION = (
    "What is your overall rating on the quality of this picture? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality."
)
_NAMES = ", ".join(FAMILIES)


def mos_from_severity(severity: int, area_fraction: float = 1.0) -> float:
    """Synthetic MOS on [1, 5]: 5 - 0.8 * severity * sqrt(area fraction) (global: 4.2 .. 1.0; pristine 5.0).

    The square root makes a local distortion weigh more than its bare area, as a visible defect does.
    """
    return round(5.0 - 0.8 * severity * math.sqrt(max(0.0, min(1.0, area_fraction))), 2)


def _subject(full_reference: bool) -> str:
    return "the second image, compared with the pristine reference shown first" if full_reference else "this image"


def distortion_question(full_reference: bool) -> str:
    return (
        f"Which distortion has been applied to {_subject(full_reference)}, and how severe is it? It may cover the "
        f"whole image or only a region of it. Possible distortions: {_NAMES}. Severity is an integer from "
        "1 (slight) to 5 (extreme)."
    )


def _options_text(options: list[str]) -> str:
    return "Options:\n" + "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options))


def type_choice_question(options: list[str], full_reference: bool) -> str:
    return f"Which distortion has been applied to {_subject(full_reference)}?\n{_options_text(options)}"


def region_choice_question(options: list[str], full_reference: bool) -> str:
    return (
        f"Only one rectangular region of {_subject(full_reference)} is distorted. In which part of the image is "
        f"it?\n{_options_text(options)}"
    )


def grounding_question(family: str, width: int, height: int) -> str:
    return (
        f"This image is {width} pixels wide and {height} pixels high. One rectangular region of it has been "
        f"degraded by {family}. Where is that region? Give its box [x1, y1, x2, y2] in pixels of this image: "
        "(x1, y1) its top-left corner, (x2, y2) its bottom-right corner (exclusive)."
    )


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs; picklable so that spawned processes see exactly what the parent chose."""

    out_dir: str
    per_image: int
    seed: int
    region_prob: float
    box_frac: tuple[float, float]
    max_side: int
    families: tuple[str, ...]


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


_PURPOSES = {"families": 1, "variant": 2, "records": 3}


def _rng(seed: int, name: str, index: int, purpose: str) -> np.random.Generator:
    """Independent stream per (seed, image, variant, purpose): results do not depend on order or workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, _name_hash(name), index, _PURPOSES[purpose]]))


def _family_for(settings: Settings, name: str, index: int, colour: bool) -> str:
    # Shuffled rounds over the families: an image's first len(families) variants never repeat a family.
    pool = [f for f in settings.families if colour or f not in COLOUR_ONLY] or list(settings.families)
    round_, pos = divmod(index, len(pool))
    order = _rng(settings.seed, name, round_, "families").permutation(len(pool))
    return pool[int(order[pos])]


def _draw_box(rng: np.random.Generator, width: int, height: int, frac: tuple[float, float]) -> list[int]:
    bw = max(1, min(width, int(round(rng.uniform(*frac) * width))))
    bh = max(1, min(height, int(round(rng.uniform(*frac) * height))))
    x1 = int(rng.integers(0, width - bw + 1))
    y1 = int(rng.integers(0, height - bh + 1))
    return [x1, y1, x1 + bw, y1 + bh]


def _is_colour(img: Image.Image) -> bool:
    arr = np.asarray(img, dtype=np.int16)
    return bool((arr.max(axis=2) - arr.min(axis=2)).mean() > 2.0)


def _distort(img: Image.Image, family: str, severity: int, bbox, rng) -> tuple[Image.Image, float]:
    """Apply globally (bbox None) or to the box only; return the image and the mean change inside the area."""
    if bbox is None:
        out = apply(img, family, severity, rng)
        before, after = img, out
    else:
        before = img.crop(tuple(bbox))
        after = apply(before, family, severity, rng)
        out = img.copy()
        out.paste(after, (bbox[0], bbox[1]))
    change = float(np.abs(np.asarray(after, np.float32) - np.asarray(before, np.float32)).mean())
    return out, change


def _load(path: Path, max_side: int) -> tuple[Image.Image, bool]:
    """Decode to RGB (upright, at most max_side px); also say whether the file's own bytes decode to it."""
    with Image.open(path) as im:
        im.load()
        fmt = im.format
        oriented = im.getexif().get(0x0112, 1) not in (0, 1)
        exact = fmt in ("JPEG", "PNG") and im.mode == "RGB" and not oriented
        rgb = (ImageOps.exif_transpose(im) if oriented else im).convert("RGB")
    if rgb.width < MIN_SIDE or rgb.height < MIN_SIDE:
        raise ValueError(f"too small ({rgb.width}x{rgb.height}; need at least {MIN_SIDE} px a side)")
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb, exact = rgb.resize(size, Image.Resampling.LANCZOS), False
        if min(rgb.size) < MIN_SIDE:
            raise ValueError(f"too small after resizing to {rgb.width}x{rgb.height}")
    return rgb, exact


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, "PNG", compress_level=9)


def _process_image(job: tuple[str, str, str, Settings]) -> dict:
    """Worker: write one image's reference copy and distorted variants; return what the records need.

    Any failure (undecodable file, an encoder refusing an odd size) makes the image "bad": reported, not fatal.
    """
    path, name, key, settings = job
    try:
        return _distort_one(Path(path), name, key, settings)
    except Exception as exc:  # noqa: BLE001 - one bad input must never stop the run
        return {"bad": f"{path}: {type(exc).__name__}: {exc}".replace("\n", " ")}


def _distort_one(path: Path, name: str, key: str, settings: Settings) -> dict:
    img, exact = _load(path, settings.max_side)
    out = Path(settings.out_dir)
    ext = path.suffix.lower() if exact else ".png"
    reference = f"images/reference/{key}{ext}"
    if exact:  # the file's own bytes decode to exactly the pixels we distort
        shutil.copyfile(path, out / reference)
    else:
        _save_png(img, out / reference)
    width, height = img.size
    colour = _is_colour(img)
    variants = []
    for index in range(settings.per_image):
        rng = _rng(settings.seed, name, index, "variant")
        family = _family_for(settings, name, index, colour)
        severity = int(rng.integers(1, 6))
        local = bool(rng.random() < settings.region_prob)
        for attempt in range(MAX_ATTEMPTS):
            if attempt >= 3:  # this family barely shows on this image (e.g. a flat area): try another one
                family = settings.families[int(rng.integers(len(settings.families)))]
            bbox = _draw_box(rng, width, height, settings.box_frac) if local else None
            distorted, change = _distort(img, family, severity, bbox, rng)
            if change >= MIN_CHANGE:
                break
        rel = f"images/{key}_{index:03d}.png"
        _save_png(distorted, out / rel)
        variants.append({"image": rel, "family": family, "severity": severity, "bbox": bbox,
                         "weak": change < MIN_CHANGE})
    return {"name": name, "key": key, "reference": reference, "width": width, "height": height,
            "variants": variants}


def _region_name(bbox: list[int], width: int, height: int) -> str:
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    return REGIONS[min(2, int(3 * cy / height))][min(2, int(3 * cx / width))]


def _region_options(bbox, width, height, rng) -> tuple[list[str], str]:
    """The box's region plus the 3 regions whose grid cells the box covers least (least ambiguous distractors)."""
    right = _region_name(bbox, width, height)
    scored = []
    for r, row in enumerate(REGIONS):
        for c, region in enumerate(row):
            if region == right:
                continue
            cx1, cx2 = width * c / 3, width * (c + 1) / 3
            cy1, cy2 = height * r / 3, height * (r + 1) / 3
            overlap = max(0.0, min(cx2, bbox[2]) - max(cx1, bbox[0])) * max(0.0, min(cy2, bbox[3]) - max(cy1, bbox[1]))
            scored.append((overlap / ((cx2 - cx1) * (cy2 - cy1)), float(rng.random()), region))
    distractors = [region for _, _, region in sorted(scored)[:3]]
    return _shuffled(right, distractors, rng)


def _shuffled(right: str, distractors: list[str], rng) -> tuple[list[str], str]:
    options = [right, *distractors]
    order = rng.permutation(len(options))
    options = [options[int(i)] for i in order]
    return options, LETTERS[options.index(right)]


def _records_for(info: dict, settings: Settings) -> dict[str, list[dict]]:
    """All records of one image, built in the parent from the worker's report (cheap, deterministic)."""
    out = {"distortion": [], "choice": [], "grounding": [], "scoring": []}
    key, width, height = info["key"], info["width"], info["height"]
    out["scoring"].append({"sample_id": f"{key}_ref_score", "type": "scoring_image", "image": info["reference"],
                           "question": SCORING_QUESTION, "solution": 5.0})
    for index, v in enumerate(info["variants"]):
        rng = _rng(settings.seed, info["name"], index, "records")
        family, severity, bbox = v["family"], v["severity"], v["bbox"]
        sid = f"{key}_{index:03d}"
        meta = {"image": v["image"], "distortion": family, "severity": severity, "bbox": bbox,
                "mode": "global" if bbox is None else "local"}
        others = [f for f in FAMILIES if f != family]
        distractors = [others[int(i)] for i in rng.choice(len(others), size=3, replace=False)]
        type_options, type_letter = _shuffled(family, distractors, rng)
        for fr in (False, True):
            extra = {"reference": info["reference"]} if fr else {}
            tag = "_fr" if fr else ""
            out["distortion"].append({**meta, **extra, "sample_id": f"{sid}_distortion{tag}",
                                      "type": "distortion_image", "question": distortion_question(fr),
                                      "solution": family})
            out["choice"].append({**meta, **extra, "sample_id": f"{sid}_type_choice{tag}", "type": "choice_image",
                                  "question": type_choice_question(type_options, fr), "options": type_options,
                                  "solution": type_letter})
        if bbox is not None:
            region_options, region_letter = _region_options(bbox, width, height, rng)
            for fr in (False, True):
                extra = {"reference": info["reference"]} if fr else {}
                tag = "_fr" if fr else ""
                out["choice"].append({**meta, **extra, "sample_id": f"{sid}_region_choice{tag}",
                                      "type": "choice_image", "question": region_choice_question(region_options, fr),
                                      "options": region_options, "solution": region_letter})
            out["grounding"].append({**meta, "sample_id": f"{sid}_grounding", "type": "grounding_image",
                                     "question": grounding_question(family, width, height), "solution": list(bbox)})
        area = 1.0 if bbox is None else (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]) / (width * height)
        out["scoring"].append({**meta, "sample_id": f"{sid}_score", "type": "scoring_image",
                               "question": SCORING_QUESTION, "solution": mos_from_severity(severity, area)})
    return out


def find_images(images_dir: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files in images_dir (sorted; subfolders too if recursive), leaving out exclude (an output dir)."""
    found = []
    for p in images_dir.rglob("*") if recursive else images_dir.iterdir():
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        if exclude is not None and exclude.resolve() in p.resolve().parents:
            continue
        found.append(p)
    return sorted(found, key=lambda p: p.relative_to(images_dir).as_posix())


def _keys(names: list[str]) -> list[str]:
    """File-name-safe keys: the relative path without extension; colliding ones get a short hash of the name."""
    base = [re.sub(r"[^A-Za-z0-9._-]+", "_", n.rsplit(".", 1)[0].replace("/", "__")) for n in names]
    counts: dict[str, int] = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    return [b if counts[b] == 1 else f"{b}_{hashlib.sha256(n.encode()).hexdigest()[:8]}" for b, n in zip(base, names)]


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def make_perception_data(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    per_image: int = 4,
    seed: int = 0,
    workers: int = 1,
    region_prob: float = 0.5,
    box_frac: tuple[float, float] = (0.3, 0.6),
    max_side: int = 1024,
    families: list[str] | tuple[str, ...] | None = None,
    recursive: bool = False,
    progress: bool = True,
    log=None,
) -> dict:
    """Write images/ and distortion/choice/grounding/scoring/all.json under out_dir; return a summary dict.

    Bad input images are reported one line each through `log` (stderr by default) and skipped, never fatal.
    """
    images_dir, out = Path(images_dir), Path(out_dir)
    families = tuple(families or FAMILIES)
    unknown = [f for f in families if f not in DISTORTIONS]
    if unknown:
        raise ValueError(f"unknown distortion(s) {unknown}; choose from {', '.join(FAMILIES)}")
    if per_image < 0 or seed < 0 or not 0.0 <= region_prob <= 1.0:
        raise ValueError("per_image and seed must be >= 0 and region_prob within [0, 1]")
    lo, hi = box_frac
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"box_frac must satisfy 0 < low <= high <= 1, got {box_frac}")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"no such image folder: {images_dir}")
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))

    paths = find_images(images_dir, recursive=recursive, exclude=out)
    names = [p.relative_to(images_dir).as_posix() for p in paths]
    (out / "images" / "reference").mkdir(parents=True, exist_ok=True)
    settings = Settings(str(out), int(per_image), int(seed), float(region_prob), (float(lo), float(hi)),
                        int(max_side or 0), families)
    jobs = [(str(p), n, k, settings) for p, n, k in zip(paths, names, _keys(names))]

    results: list[dict] = []
    bar = tqdm(total=len(jobs), desc="make-perception-data", unit="img", disable=not progress, file=sys.stderr)
    workers = max(1, min(int(workers), len(jobs) or 1))
    if workers == 1:
        stream = map(_process_image, jobs)
        pool = None
    else:  # spawn: safe even when the caller has threads (torch) running; output is order-independent anyway
        pool = multiprocessing.get_context("spawn").Pool(workers)
        stream = pool.imap(_process_image, jobs, chunksize=1)
    try:
        for result in stream:
            if "bad" in result:
                log(result["bad"])
            results.append(result)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()

    files: dict[str, list[dict]] = {"distortion": [], "choice": [], "grounding": [], "scoring": []}
    good = [r for r in results if "bad" not in r]
    for info in good:
        for kind, records in _records_for(info, settings).items():
            files[kind].extend(records)
    files["all"] = files["distortion"] + files["choice"] + files["grounding"]
    for kind, records in files.items():
        _write_json(out / f"{kind}.json", records)
    skipped = len(results) - len(good)
    return {
        "images": len(good),
        "skipped": skipped,
        "bad": [r["bad"] for r in results if "bad" in r],
        "variants": sum(len(r["variants"]) for r in good),
        "weak": sum(v["weak"] for r in good for v in r["variants"]),
        "records": {kind: len(records) for kind, records in files.items()},
        "out_dir": str(out),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of pristine images")
    parser.add_argument("--recursive", action="store_true", help="also take images from subfolders of --images")
    parser.add_argument("--out", required=True, help="output folder; use it as --image_root when training")
    parser.add_argument("--per_image", type=int, default=4, help="distorted variants per pristine image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes")
    parser.add_argument("--region_prob", type=float, default=0.5, help="probability a variant is local (in a box)")
    parser.add_argument("--box_frac", type=float, nargs=2, default=(0.3, 0.6), metavar=("LOW", "HIGH"),
                        help="box width and height as a fraction of the image's, drawn uniformly in [LOW, HIGH]")
    parser.add_argument("--max_side", type=int, default=1024,
                        help="downscale larger inputs to this many pixels on the long side first (0: never)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=None,
                        help="restrict to these distortion families (default: all 12)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = make_perception_data(
            args.images, args.out, per_image=args.per_image, seed=args.seed, workers=args.workers,
            region_prob=args.region_prob, box_frac=tuple(args.box_frac), max_side=args.max_side,
            families=args.families, recursive=args.recursive, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{kind}.json {n}" for kind, n in summary["records"].items())
    print(f"{summary['images']} image(s), {summary['variants']} variant(s) -> {summary['out_dir']}: {counts}")
    if summary["weak"]:
        print(f"{summary['weak']} variant(s) changed their area by less than {MIN_CHANGE}/255 on average")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} bad image(s)", file=sys.stderr)
    if summary["images"] == 0:
        print("error: no usable image found", file=sys.stderr)
        return 1
    return 0
