"""Tests for the perception data generator: distortions are monotone and local, output is seeded and valid.

Must stay fast on 2 CPU cores (small images, one shared generated set) and must not write outside tmp_path.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqrl.data import validate
from vqrl.datagen import perception
from vqrl.datagen.distortions import DISTORTIONS, FAMILIES, apply, markdown_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
RECORD_FILES = ("distortion", "choice", "grounding", "scoring", "all")


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.open(EXAMPLES / f"{name}.jpg").convert("RGB") for name in ("chelsea", "coffee")}


def test_registry_has_12_families_of_5_levels():
    assert len(FAMILIES) == 12 == len(set(FAMILIES))
    assert {"gaussian_blur", "motion_blur", "gaussian_noise", "impulse_noise", "jpeg_compression", "brighten",
            "darken", "contrast_loss", "saturation_loss", "color_quantization", "pixelation"} < set(FAMILIES)
    assert all(len(d.levels) == 5 for d in DISTORTIONS.values())


def test_docs_table_matches_code():
    # the parameter table in the docs is generated from the registry: regenerate it if this fails
    table = markdown_table().splitlines()
    assert len(table) == 2 + len(FAMILIES)
    for line, (name, d) in zip(table[2:], DISTORTIONS.items()):
        assert line.startswith(f"| `{name}` | {d.group} | {d.param} | ") and line.endswith(f" | {d.description} |")
    docs = (ROOT / "docs" / "perception.md").read_text(encoding="utf-8").splitlines()
    start = docs.index(table[0])
    assert docs[start:start + len(table)] == table
    assert docs[start + len(table)].strip() == ""  # no stale row after the last family


@pytest.mark.parametrize("family", FAMILIES)
def test_psnr_strictly_decreases_with_severity(family, photos):
    for name, img in photos.items():
        values = [psnr(img, apply(img, family, s, np.random.default_rng(7))) for s in range(1, 6)]
        assert all(a > b for a, b in zip(values, values[1:])), f"{family} on {name}: {values}"
        assert values[0] < 45, f"{family} severity 1 is invisible on {name}: {values[0]:.1f} dB"


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_is_pure_and_seeded(family, photos):
    img = photos["chelsea"].resize((96, 64))
    before = img.tobytes()
    a = apply(img, family, 3, np.random.default_rng(1))
    b = apply(img, family, 3, np.random.default_rng(1))
    assert img.tobytes() == before
    assert a.tobytes() == b.tobytes() and a.size == img.size and a.mode == "RGB"


def _luma(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float64) @ np.array([0.299, 0.587, 0.114])


def _chroma(img: Image.Image) -> float:
    arr = np.asarray(img, np.float64)
    return float((arr.max(axis=2) - arr.min(axis=2)).mean())


# What each family does to the picture, as a statistic that must move one way as severity grows.
DIRECTIONS = {
    "brighten": (lambda img: _luma(img).mean(), "up"),
    "darken": (lambda img: _luma(img).mean(), "down"),
    "contrast_loss": (lambda img: _luma(img).std(), "down"),
    "saturation_loss": (_chroma, "down"),
    "gaussian_blur": (lambda img: np.abs(np.diff(_luma(img), axis=1)).mean(), "down"),
    "motion_blur": (lambda img: np.abs(np.diff(_luma(img), axis=0)).mean() + np.abs(np.diff(_luma(img), axis=1)).mean(),
                    "down"),
    "gaussian_noise": (lambda img: np.abs(np.diff(_luma(img), axis=1)).mean(), "up"),
    "impulse_noise": (lambda img: float(np.mean(np.all(np.asarray(img) == 255, axis=2) |
                                                np.all(np.asarray(img) == 0, axis=2))), "up"),
    "color_quantization": (lambda img: len(set(img.getdata())), "down"),
}


@pytest.mark.parametrize("family", sorted(DIRECTIONS))
def test_each_family_moves_the_picture_the_way_its_name_says(family, photos):
    stat, way = DIRECTIONS[family]
    img = photos["coffee"].resize((160, 120))
    values = [stat(img)] + [stat(apply(img, family, s, np.random.default_rng(2))) for s in range(1, 6)]
    pairs = list(zip(values, values[1:]))
    assert all(b > a for a, b in pairs) if way == "up" else all(b < a for a, b in pairs), (family, values)
    if family == "saturation_loss":
        assert values[-1] < 1.0  # severity 5 keeps no colour: grey within rounding


@pytest.mark.parametrize("block_index", range(5))
def test_pixelation_makes_constant_blocks_of_its_size(block_index, photos):
    block = DISTORTIONS["pixelation"].levels[block_index]
    img = photos["chelsea"].resize((97, 61))  # not a multiple of any block size
    arr = np.asarray(apply(img, "pixelation", block_index + 1, np.random.default_rng(0)), np.int16)
    for axis, size in ((1, 97), (0, 61)):  # along x, then y: runs of equal columns (rows), one per small pixel
        small = -(-size // block)
        changes = np.flatnonzero(np.any(np.diff(arr, axis=axis) != 0, axis=(0, 2) if axis == 1 else (1, 2))) + 1
        runs = np.diff([0, *changes.tolist(), size])
        assert len(runs) == small, (axis, runs)
        assert set(runs.tolist()) <= {size // small, -(-size // small)}, (axis, runs)


@pytest.mark.parametrize("family", ["jpeg_compression", "jpeg2000_compression"])
def test_compression_matches_an_encode_decode_done_here(family, photos):
    """The codecs and settings the table names (JPEG 4:2:0 at the quality; irreversible JPEG 2000 at the ratio)."""
    import io

    img = photos["coffee"].resize((96, 64))
    level = DISTORTIONS[family].levels[2]
    buf = io.BytesIO()
    if family == "jpeg_compression":
        img.save(buf, "JPEG", quality=level, subsampling=2)
    else:
        img.save(buf, "JPEG2000", quality_mode="rates", quality_layers=[float(level)], irreversible=True,
                 num_resolutions=6)
    expected = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert apply(img, family, 3, np.random.default_rng(0)).tobytes() == expected.tobytes()


def test_apply_rejects_unknown_family_and_severity(photos):
    with pytest.raises(ValueError, match="unknown distortion"):
        apply(photos["chelsea"], "sharpen", 1, np.random.default_rng(0))
    for bad in (0, 6, 2.5):
        with pytest.raises(ValueError, match="severity"):
            apply(photos["chelsea"], "darken", bad, np.random.default_rng(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_local_mode_leaves_outside_pixels_untouched(family, photos):
    img = photos["coffee"].resize((120, 80))
    box = [17, 9, 81, 57]
    out, change = perception._distort(img, family, 4, box, np.random.default_rng(3))
    a, b = np.asarray(img), np.asarray(out)
    outside = np.ones(a.shape[:2], bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.array_equal(a[outside], b[outside])
    assert change > 0 and not np.array_equal(a[~outside], b[~outside])


def test_mos_rule():
    assert perception.mos_from_severity(1) == 4.2 and perception.mos_from_severity(5) == 1.0
    assert perception.mos_from_severity(5, 0.25) == 3.0
    assert all(1.0 <= perception.mos_from_severity(s, a) <= 5.0 for s in range(1, 6) for a in (0.01, 0.3, 1.0))


def _inputs(tmp: Path) -> Path:
    """Three good photographs (one greyscale) and three bad files: corrupt bytes, a truncated JPEG, a 10 px image."""
    src = tmp / "pristine"
    src.mkdir()
    for name in ("chelsea", "camera", "rocket"):
        shutil.copy(EXAMPLES / f"{name}.jpg", src / f"{name}.jpg")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (src / "truncated.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:600])
    Image.new("RGB", (10, 10), "red").save(src / "tiny.png")
    (src / "notes.txt").write_text("not an image, not even looked at")
    return src


def _generate(src: Path, out: Path, workers: int, seed: int = 0, **kw) -> tuple[dict, list[str]]:
    lines: list[str] = []
    summary = perception.make_perception_data(src, out, per_image=4, seed=seed, workers=workers, max_side=128,
                                              progress=False, log=lines.append, **kw)
    return summary, lines


def _tree(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path, dict, list[str]]:
    tmp = tmp_path_factory.mktemp("perception")
    src = _inputs(tmp)
    summary, lines = _generate(src, tmp / "out", workers=1)
    return src, tmp / "out", summary, lines


def _load(out: Path) -> dict[str, list[dict]]:
    return {kind: json.loads((out / f"{kind}.json").read_text()) for kind in RECORD_FILES}


def test_bad_images_are_reported_and_skipped(generated):
    src, out, summary, lines = generated
    assert summary["images"] == 3 and summary["skipped"] == 3 and summary["variants"] == 12
    assert sorted(Path(line.split(": ", 1)[0]).name for line in lines) == ["corrupt.png", "tiny.png", "truncated.jpg"]
    assert all(": " in line and "\n" not in line for line in lines)
    text = "".join((out / f"{kind}.json").read_text() for kind in RECORD_FILES)
    assert "corrupt" not in text and "truncated" not in text and "tiny" not in text


def test_same_seed_gives_identical_files_whatever_the_worker_count(generated, tmp_path):
    src, out, _, _ = generated
    _generate(src, tmp_path / "w1", workers=1)
    _generate(src, tmp_path / "w2", workers=2)
    reference = _tree(out)
    assert _tree(tmp_path / "w1") == reference
    assert _tree(tmp_path / "w2") == reference
    _generate(src, tmp_path / "s1", workers=1, seed=1)
    assert _tree(tmp_path / "s1") != reference


def test_an_image_output_does_not_depend_on_the_other_images(generated, tmp_path):
    _, out, _, _ = generated
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(EXAMPLES / "rocket.jpg", alone / "rocket.jpg")
    _generate(alone, tmp_path / "out", workers=1)
    mine, everything = _tree(tmp_path / "out"), _tree(out)
    for rel, data in mine.items():
        if rel.startswith("images/"):
            assert everything[rel] == data
    rocket = [r for r in _load(out)["all"] if r["image"].startswith("images/rocket")]
    assert _load(tmp_path / "out")["all"] == rocket


def test_records_have_their_fields_and_existing_files(generated):
    _, out, _, _ = generated
    files = _load(out)
    ids = [r["sample_id"] for kind in ("distortion", "choice", "grounding", "scoring") for r in files[kind]]
    assert len(ids) == len(set(ids))
    assert files["all"] == files["distortion"] + files["choice"] + files["grounding"]
    for kind, records in files.items():
        assert records, kind
        for r in records:
            for key in ("image", "reference"):
                if key in r:
                    assert not Path(r[key]).is_absolute() and (out / r[key]).is_file(), r
            assert r["question"].strip() and r["type"].endswith("_image")
    sizes = {r["image"]: Image.open(out / r["image"]).size for r in files["distortion"]}
    for r in files["distortion"]:
        assert r["type"] == "distortion_image" and r["solution"] == r["distortion"] in FAMILIES
        assert r["severity"] in range(1, 6) and r["mode"] in ("global", "local")
        assert all(name in r["question"] for name in FAMILIES) and "1" in r["question"] and "5" in r["question"]
        assert (r["bbox"] is None) == (r["mode"] == "global")
        if r["bbox"] is not None:
            w, h = sizes[r["image"]]
            x1, y1, x2, y2 = r["bbox"]
            assert all(isinstance(v, int) for v in r["bbox"]) and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        if "reference" in r:
            assert "reference" in r["question"]
    for r in files["choice"]:
        assert r["type"] == "choice_image" and len(r["options"]) == 4 == len(set(r["options"]))
        answer = r["options"]["ABCD".index(r["solution"])]
        assert answer == r["distortion"] or answer in sum(perception.REGIONS, ())
        if answer in sum(perception.REGIONS, ()):
            assert r["mode"] == "local" and answer == perception._region_name(r["bbox"], *sizes[r["image"]])
    assert {r["solution"] for r in files["choice"]} > {"A"}  # option order is shuffled
    for r in files["grounding"]:
        w, h = sizes[r["image"]]
        assert r["type"] == "grounding_image" and r["mode"] == "local" and r["solution"] == r["bbox"]
        assert f"{w} pixels wide and {h} pixels high" in r["question"]
    for r in files["scoring"]:
        assert r["type"] == "scoring_image" and 1.0 <= r["solution"] <= 5.0
    pristine = [r for r in files["scoring"] if r["image"].startswith("images/reference/")]
    assert len(pristine) == 3 and all(r["solution"] == 5.0 for r in pristine)
    modes = {r["mode"] for r in files["distortion"]}
    assert modes == {"global", "local"}
    grey = {r["distortion"] for r in files["distortion"] if r["image"].startswith("images/camera")}
    assert "saturation_loss" not in grey  # a no-op on a greyscale photo


def test_saved_local_variants_differ_from_reference_only_inside_the_box(tmp_path):
    # every family in local mode, end to end through PNG files: 12 variants of one colour photo, all local
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(EXAMPLES / "coffee.jpg", src / "coffee.jpg")
    perception.make_perception_data(src, tmp_path / "out", per_image=12, region_prob=1.0, max_side=96,
                                    progress=False)
    records = json.loads((tmp_path / "out" / "distortion.json").read_text())
    records = [r for r in records if "reference" in r]
    assert sorted(r["distortion"] for r in records) == sorted(FAMILIES)
    for r in records:
        ref = np.asarray(Image.open(tmp_path / "out" / r["reference"]).convert("RGB"))
        img = np.asarray(Image.open(tmp_path / "out" / r["image"]).convert("RGB"))
        x1, y1, x2, y2 = r["bbox"]
        inside = np.zeros(ref.shape[:2], bool)
        inside[y1:y2, x1:x2] = True
        assert np.array_equal(ref[~inside], img[~inside]), r["distortion"]
        assert not np.array_equal(ref[inside], img[inside]), r["distortion"]


def test_every_record_passes_validate_data(generated):
    _, out, _, _ = generated
    files = [str(out / f"{kind}.json") for kind in RECORD_FILES]
    assert validate.validate_files(files, image_root=str(out)) == []


def test_cli_and_shipped_example_set(tmp_path):
    """The command written in docs/perception.md regenerates examples/perception's records exactly."""
    from vqrl.cli import main

    shipped = ROOT / "examples" / "perception"
    assert sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file()) < 1.5e6
    docs = (ROOT / "docs" / "perception.md").read_text(encoding="utf-8")
    prefix = "vqrl make-perception-data --images examples/"
    command = next(line for line in docs.splitlines() if line.startswith(prefix))
    argv = shlex.split(command)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    argv[argv.index("--images") + 1] = str(ROOT / "examples" / "images")
    assert main(argv + ["--no_progress"]) == 0
    for kind in RECORD_FILES:
        assert (tmp_path / "again" / f"{kind}.json").read_bytes() == (shipped / f"{kind}.json").read_bytes(), kind
    # and the same pixels: every shipped image (11 of the 12 families) is regenerated exactly
    images = sorted(p.relative_to(shipped) for p in (shipped / "images").rglob("*.png"))
    assert images == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again" / "images").rglob("*.png"))
    for rel in images:
        again = np.asarray(Image.open(tmp_path / "again" / rel).convert("RGB"))
        assert np.array_equal(again, np.asarray(Image.open(shipped / rel).convert("RGB"))), rel
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["make-perception-data", "--images", str(empty), "--out", str(tmp_path / "none"), "--no_progress"]) == 1
    assert validate.validate_files([str(shipped / f"{k}.json") for k in RECORD_FILES], image_root=str(shipped)) == []


def _one_photo(folder: Path, name: str = "coffee.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / name, folder / name)
    return folder


def test_an_image_too_thin_after_downscaling_is_reported(tmp_path):
    src = _one_photo(tmp_path / "src")
    Image.new("RGB", (400, 40), "blue").save(src / "banner.png")  # 128 x 13 at --max_side 128
    summary, lines = _generate(src, tmp_path / "out", workers=1)
    assert summary["images"] == 1 and summary["skipped"] == 1
    assert len(lines) == 1 and lines[0].startswith(str(src / "banner.png"))
    assert "too small after resizing to 128x13" in lines[0]


def test_subfolders_only_with_recursive_and_never_the_output_folder(tmp_path):
    src = _one_photo(tmp_path / "src")
    _one_photo(src / "sub", "rocket.jpg")
    out = src / "generated"  # an output folder inside the input folder: its images are never inputs
    flat, _ = _generate(src, out, workers=1)
    assert flat["images"] == 1
    deep, _ = _generate(src, out, workers=1, recursive=True)
    assert deep["images"] == 2
    assert {r["image"] for r in _load(out)["scoring"] if r["solution"] == 5.0} == {
        "images/reference/coffee.png", "images/reference/sub__rocket.png"}  # downscaled: re-encoded


class _FakeContext:
    """Stands in for multiprocessing's spawn context: records the pool size, maps in this process."""

    def __init__(self, sizes: list):
        self.sizes = sizes

    def Pool(self, n):  # noqa: N802 - multiprocessing's name
        self.sizes.append(n)
        return self

    def imap(self, fn, jobs, chunksize=1):
        return map(fn, jobs)

    def close(self):
        pass

    def join(self):
        pass


@pytest.mark.parametrize("workers, expected", [(1, []), (2, [2]), (8, [3])])
def test_workers_are_processes_at_most_one_per_image(tmp_path, monkeypatch, workers, expected):
    sizes = []
    monkeypatch.setattr(perception.multiprocessing, "get_context", lambda method: _FakeContext(sizes))
    src = _one_photo(_one_photo(_one_photo(tmp_path / "src"), "rocket.jpg"), "camera.jpg")
    perception.make_perception_data(src, tmp_path / "out", per_image=1, max_side=64, workers=workers,
                                    progress=False, log=lambda line: None)
    assert sizes == expected


def test_cli_defaults_are_the_function_defaults_and_progress_is_optional(tmp_path, capsys):
    import argparse
    import inspect

    from vqrl.cli import main

    parser = argparse.ArgumentParser()
    perception.add_arguments(parser)
    args = parser.parse_args(["--images", "i", "--out", "o"])
    defaults = {k: p.default for k, p in inspect.signature(perception.make_perception_data).parameters.items()}
    for key in ("per_image", "seed", "region_prob", "max_side", "families", "recursive"):
        assert getattr(args, key) == defaults[key], key
    assert tuple(args.box_frac) == defaults["box_frac"] and args.no_progress is False

    src = _one_photo(tmp_path / "src")
    assert main(["make-perception-data", "--images", str(src), "--out", str(tmp_path / "a"), "--per_image", "1",
                 "--max_side", "64", "--workers", "1"]) == 0
    assert "make-perception-data" in capsys.readouterr().err  # the progress bar
    assert main(["make-perception-data", "--images", str(src), "--out", str(tmp_path / "b"), "--per_image", "1",
                 "--max_side", "64", "--workers", "1", "--no_progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "1 image(s), 1 variant(s)" in captured.out


def test_weak_variants_are_counted_and_reported(tmp_path, capsys):
    """On a flat grey picture most distortions change (almost) nothing: such variants are kept, flagged weak,
    counted in the summary and reported by the command."""
    from vqrl.cli import main

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(src / "flat.png")
    summary = perception.make_perception_data(src, tmp_path / "a", per_image=12, region_prob=0.0, progress=False)
    assert summary["variants"] == 12 and 0 < summary["weak"] < 12
    capsys.readouterr()
    assert main(["make-perception-data", "--images", str(src), "--out", str(tmp_path / "b"), "--per_image", "12",
                 "--region_prob", "0", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert f"{summary['weak']} variant(s) changed their area by less than 1.0/255 on average" in out
