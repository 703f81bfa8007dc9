"""Data layer: records (JSON list / JSONL, per-record checks, weighted seeded mixing), media (Qwen-sized images,
PyAV video), prompts, training rows, and `vqrl validate-data` as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vqrl.data.dataset import DataConfig, MediaLoader, RowBuilder, load_checked_records, make_train_dataset
from vqrl.data.media import VisionSpec, load_image, load_video, video_frame_indices
from vqrl.data.prompts import (NO_THINK_INSTRUCTION, REFERENCE_NOTE, THINK_INSTRUCTION, PromptConfig, QUESTIONS,
                               build_messages, prompt_text)
from vqrl.data.records import TASK_TYPES, DataError, check_record, mix, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
VIDEOS = sorted(os.path.join(EXAMPLES, "videos", f) for f in os.listdir(os.path.join(EXAMPLES, "videos")))


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj, indent=2))
    return str(path)


def save_image(path, size=(64, 48), color=(200, 30, 30)) -> str:
    Image.new("RGB", size, color).save(path)
    return str(path)


def write_video(path, frames=40, fps=10, width=64, height=48) -> str:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            arr = np.zeros((height, width, 3), dtype=np.uint8)
            arr[:, : (i % width)] = 255  # frame i: a white strip i pixels wide
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def scoring(image, mos=3.5, **extra) -> dict:
    return {"image": image, "solution": mos, "type": "scoring_image", **extra}


# --------------------------------------------------------------------------------------------------- read_records


def test_read_json_list_tags_records_with_file_and_index(tmp_path):
    path = write_json(tmp_path / "d.json", [scoring("a.jpg"), scoring("b.jpg", 2.0), scoring("c.jpg", 4.0)])
    result = read_records(path)
    assert result.problems == []
    assert [r["image"] for r in result.records] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [r["_index"] for r in result.records] == [0, 1, 2]
    assert all(r["_file"] == path for r in result.records)
    assert len({r["sample_id"] for r in result.records}) == 3


def test_read_jsonl_reports_the_bad_line_and_keeps_the_others(tmp_path):
    lines = [json.dumps(scoring("a.jpg")), '{"image": "b.jpg", "solution": 3.0,, }', json.dumps(scoring("c.jpg"))]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    result = read_records(tmp_path / "d.jsonl")
    assert [r["image"] for r in result.records] == ["a.jpg", "c.jpg"]
    assert [r["_index"] for r in result.records] == [0, 2]
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.index == 1 and "line 2" in problem.reason
    assert str(problem).startswith(f"{tmp_path / 'd.jsonl'}:1: invalid JSON")


def test_truncated_json_list_keeps_earlier_records_and_locates_the_broken_one(tmp_path):
    good = [scoring("a.jpg"), scoring("b.jpg")]
    last_line = '{"image": "c.jpg", "solution": 4.1'  # the file was cut here
    text = "[\n" + ",\n".join(json.dumps(r) for r in good) + ",\n" + last_line
    (tmp_path / "d.json").write_text(text)
    result = read_records(tmp_path / "d.json")
    assert [r["image"] for r in result.records] == ["a.jpg", "b.jpg"]
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.index == 2
    assert f"line 4 column {len(last_line) + 1}" in problem.reason, problem.reason


def test_json_list_cut_after_a_comma_reports_the_next_index(tmp_path):
    (tmp_path / "d.json").write_text("[\n" + json.dumps(scoring("a.jpg")) + ",\n")
    result = read_records(tmp_path / "d.json")
    assert len(result.records) == 1
    assert [p.index for p in result.problems] == [1]
    assert "truncated" in result.problems[0].reason


def test_a_missing_comma_or_a_cut_right_after_a_record_keeps_the_records_before_it(tmp_path):
    a, b = json.dumps(scoring("a.jpg")), json.dumps(scoring("b.jpg"))
    (tmp_path / "d.json").write_text(f"[\n{a},\n{b}\n{a}]\n")  # no comma after b
    result = read_records(tmp_path / "d.json")
    assert [r["image"] for r in result.records] == ["a.jpg", "b.jpg"]
    (problem,) = result.problems
    assert problem.index == 2 and problem.reason == "invalid JSON at line 4 column 1: expected ',' or ']'"
    (tmp_path / "e.json").write_text(f"[\n{a},\n{b}")  # cut right after b
    result = read_records(tmp_path / "e.json")
    assert [r["image"] for r in result.records] == ["a.jpg", "b.jpg"]
    (problem,) = result.problems
    assert problem.index == 2 and problem.reason.endswith("file ends before the closing ']' (truncated?)")


def test_blank_lines_in_jsonl_are_skipped_not_the_end(tmp_path):
    lines = [json.dumps(scoring("a.jpg")), "", "   ", json.dumps(scoring("b.jpg"))]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    result = read_records(tmp_path / "d.jsonl")
    assert [(r["image"], r["_index"]) for r in result.records] == [("a.jpg", 0), ("b.jpg", 3)] and not result.problems


@pytest.mark.parametrize("text", ["", "  \n\n"])
def test_empty_file_is_one_problem_for_the_whole_file(tmp_path, text):
    (tmp_path / "d.json").write_text(text)
    result = read_records(tmp_path / "d.json")
    assert result.records == []
    assert len(result.problems) == 1 and result.problems[0].index is None
    assert "empty" in result.problems[0].reason
    assert str(result.problems[0]) == f"{tmp_path / 'd.json'}: file is empty"


def test_missing_file_is_reported_not_raised(tmp_path):
    result = read_records(tmp_path / "nope.json")
    assert result.records == [] and len(result.problems) == 1 and "cannot read" in result.problems[0].reason


def test_content_after_the_closing_bracket_is_not_silently_dropped(tmp_path):
    text = json.dumps([scoring("a.jpg")]) + "\n" + json.dumps([scoring("b.jpg")]) + "\n"
    (tmp_path / "d.json").write_text(text)
    result = read_records(tmp_path / "d.json")
    assert [r["image"] for r in result.records] == ["a.jpg"]
    (problem,) = result.problems
    assert problem.index is None and "line 2 column 1: content after the closing ']'" in problem.reason


# --------------------------------------------------------------------------------------------------- check_record


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    save_image(d / "ok.jpg")
    return str(d)


def test_check_record_accepts_a_good_record_and_numeric_strings(image_dir):
    assert check_record(scoring("ok.jpg", 4.4), image_dir) == []
    assert check_record(scoring("ok.jpg", "4.4"), image_dir) == []
    assert check_record(scoring("ok.jpg", 1), image_dir) == []  # range ends are valid
    assert check_record(scoring("ok.jpg", 5.0), image_dir) == []
    assert check_record(scoring(os.path.join(image_dir, "ok.jpg")), None) == []  # absolute path, no root


def test_check_record_missing_image_file(image_dir):
    (reason,) = check_record(scoring("gone.jpg"), image_dir)
    assert "not found" in reason and "gone.jpg" in reason


@pytest.mark.parametrize("bad", ["abc", "", None, True, [4.0], float("nan"), "inf"])
def test_check_record_non_numeric_solution(image_dir, bad):
    (reason,) = check_record(scoring("ok.jpg", bad), image_dir)
    assert "not a number" in reason


@pytest.mark.parametrize("mos", [0.99, 5.01, -3, 100])
def test_check_record_out_of_range_mos(image_dir, mos):
    (reason,) = check_record(scoring("ok.jpg", mos), image_dir)
    assert "outside the MOS range" in reason


def test_check_record_unknown_type_and_missing_fields(image_dir):
    (reason,) = check_record({"image": "ok.jpg", "solution": 3, "type": "scoring_audio"}, image_dir)
    assert "unknown type" in reason and "scoring_audio" in reason
    assert check_record({"image": "ok.jpg", "solution": 3}, image_dir) == ["missing field 'type'"]
    assert check_record({"image": "ok.jpg", "type": "scoring_image"}, image_dir) == ["missing field 'solution'"]
    assert check_record({"solution": 3, "type": "scoring_image"}, image_dir) == [
        "missing field 'image' for type scoring_image"]
    # a video task needs a video even when an image is present
    assert any("missing field 'video'" in r for r in check_record(
        {"image": "ok.jpg", "solution": 3, "type": "scoring_video"}, image_dir, image_dir))
    assert "expected an object" in check_record(["not", "a", "dict"])[0]


def test_check_record_reports_a_non_string_type_instead_of_crashing(image_dir):
    reasons = check_record({"image": "ok.jpg", "solution": 3, "type": ["scoring_image"]}, image_dir)
    assert reasons == [f"unknown type ['scoring_image'] (known: {', '.join(TASK_TYPES)})"]


def test_check_record_choice_letters(image_dir):
    rec = {"image": "ok.jpg", "type": "choice_image", "options": ["blur", "noise", "jpeg"], "solution": "B"}
    assert check_record(rec, image_dir) == []
    for bad in ("D", "AB", "1", 2, ""):
        (reason,) = check_record({**rec, "solution": bad}, image_dir)
        assert "option letter A..C" in reason, bad
    (reason,) = check_record({**rec, "options": ["only one"]}, image_dir)
    assert "options" in reason
    (reason,) = check_record({k: v for k, v in rec.items() if k != "options"}, image_dir)
    assert "options" in reason


def test_check_record_boxes(image_dir):
    rec = {"image": "ok.jpg", "type": "grounding_image", "solution": [0, 0, 10, 10]}
    assert check_record(rec, image_dir) == []
    for bad in ([10, 0, 5, 10], [5, 0, 5, 10], [0, 9, 10, 9], [0, 0, 10], "0,0,10,10", [0, 0, "a", 10]):
        (reason,) = check_record({**rec, "solution": bad}, image_dir)
        assert "not a box" in reason, bad


def test_check_record_distortion_and_reference(image_dir):
    rec = {"image": "ok.jpg", "type": "distortion_image", "solution": "gaussian_blur"}
    assert check_record(rec, image_dir) == []
    assert "non-empty string" in check_record({**rec, "solution": "  "}, image_dir)[0]
    assert check_record({**rec, "reference": "ok.jpg"}, image_dir) == []
    (reason,) = check_record({**rec, "reference": "pristine.png"}, image_dir)
    assert "reference image not found" in reason


# ------------------------------------------------------------------------------------------------------------ mix


def _source(name, n):
    return [{"sample_id": f"{name}:{i}", "name": name, "i": i} for i in range(n)]


def test_mix_weights_give_the_right_counts():
    a, b, c = _source("a", 10), _source("b", 10), _source("c", 7)
    out = mix([a, b, c], [2, 0.5, 0], seed=0)
    assert len(out) == 25
    assert sum(r["name"] == "a" for r in out) == 20
    assert sorted(r["i"] for r in out if r["name"] == "a") == sorted(list(range(10)) * 2)
    half = [r["i"] for r in out if r["name"] == "b"]
    assert len(half) == 5 and len(set(half)) == 5  # a half, without repeats
    assert not any(r["name"] == "c" for r in out)
    assert len({r["sample_id"] for r in out}) == len(out)  # repeats stay distinguishable
    assert len(mix([a, c], None, seed=0)) == 17
    assert len(mix([a], [1.5], seed=0)) == 15


def test_mix_is_seeded():
    sources = [_source("a", 10), _source("b", 20)]
    first = mix(sources, [1, 0.5], seed=3)
    assert [r["sample_id"] for r in first] == [r["sample_id"] for r in mix(sources, [1, 0.5], seed=3)]
    subsets = {tuple(r["i"] for r in mix(sources, [0, 0.5], seed=s)) for s in range(6)}
    assert len(subsets) > 1


def test_mix_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        mix([_source("a", 3), _source("b", 3)], [1.0], seed=0)
    with pytest.raises(ValueError, match="negative"):
        mix([_source("a", 3)], [-1.0], seed=0)


# ---------------------------------------------------------------------------------------------- validate-data CLI


def run_validate(*args):
    return subprocess.run([sys.executable, "-m", "vqrl.cli", "validate-data", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def validate_in_process(capsys, *args):
    """`vqrl validate-data ARGS` in this process (a subprocess spends ~10 s importing torch): (code, stdout, stderr)."""
    from vqrl.cli import main

    code = main(["validate-data", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_data_reports_every_problem_with_its_index(tmp_path):
    save_image(tmp_path / "ok.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (tmp_path / "corrupt.mp4").write_bytes(os.urandom(2048))
    records = [
        scoring("ok.jpg", 3.2),                                  # 0: fine
        scoring("missing.jpg", 3.2),                             # 1: missing image
        scoring("ok.jpg", "good"),                               # 2: non-numeric solution
        {"image": "ok.jpg", "solution": 3.0, "type": "rate_it"},  # 3: unknown type
        scoring("corrupt.jpg", 2.0),                             # 4: unreadable image
        {"video": "corrupt.mp4", "solution": 2.0, "type": "scoring_video"},  # 5: unreadable video
    ]
    text = "[\n" + ",\n".join(json.dumps(r) for r in records) + ',\n{"image": "ok.jpg", "solution": 4.'  # 6: cut
    data = tmp_path / "bad.json"
    data.write_text(text)
    proc = run_validate(data, "--image_root", tmp_path, "--video_root", tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    found = {int(line.split(": ", 1)[0].rsplit(":", 1)[1]): line for line in lines}
    assert sorted(found) == [1, 2, 3, 4, 5, 6], proc.stdout
    assert len(lines) == 6
    assert all(line.startswith(f"{data}:") for line in lines)
    assert "missing.jpg" in found[1] and "not found" in found[1]
    assert "not a number" in found[2]
    assert "unknown type 'rate_it'" in found[3]
    assert "unreadable image" in found[4] and "corrupt.jpg" in found[4]
    assert "unreadable video" in found[5]
    assert "invalid JSON at line 8" in found[6]
    assert "6 problem(s)" in proc.stderr


def test_validate_data_jsonl_and_several_files(tmp_path, capsys):
    from vqrl.cli import main

    save_image(tmp_path / "ok.jpg")
    good = write_json(tmp_path / "good.json", [scoring("ok.jpg")])
    (tmp_path / "bad.jsonl").write_text(json.dumps(scoring("ok.jpg")) + "\n" + json.dumps(scoring("ok.jpg", 9)) + "\n")
    assert main(["validate-data", good, str(tmp_path / "bad.jsonl"), "--image_root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.strip().splitlines() == [f"{tmp_path / 'bad.jsonl'}:1: solution 9.0 is outside the MOS range [1, 5]"]
    assert "1 problem(s) in 3 record(s) from 2 file(s)" in err


def test_validate_data_passes_on_the_examples():
    proc = run_validate(os.path.join("examples", "RL_examples.json"), os.path.join("examples", "RL_examples_eval.json"),
                        "--image_root", "examples", "--video_root", "examples")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""
    assert "0 problem(s)" in proc.stderr


def test_validate_reports_the_index_of_a_non_object_record(tmp_path):
    from vqrl.data.validate import validate_files

    save_image(tmp_path / "ok.jpg")
    path = write_json(tmp_path / "d.json", [scoring("ok.jpg"), 42])
    problems = validate_files([path], str(tmp_path))
    assert [str(p).split(": ", 1)[0] for p in problems] == [f"{path}:1"]


# ------------------------------------------------------------------------------------------------------------ media


@pytest.mark.parametrize("size", [(640, 480), (10, 10), (28, 28), (4000, 3000), (4000, 30), (40, 5000), (1000, 7)])
def test_load_image_follows_qwen_pixel_rules(tmp_path, size):
    spec = VisionSpec()
    path = save_image(tmp_path / "x.png", size)
    img = load_image(path, spec)
    assert img.mode == "RGB"
    w, h = img.size
    assert w % spec.factor == 0 and h % spec.factor == 0 and w > 0 and h > 0
    assert spec.min_pixels <= w * h <= spec.max_pixels
    # the aspect ratio survives (within one grid cell of rounding)
    assert abs(w / h - size[0] / size[1]) <= (size[0] / size[1]) * spec.factor / min(w, h) + 1e-9


def test_load_image_with_a_qwen3_budget(tmp_path):
    spec = VisionSpec(factor=32, min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32)
    for size in [(500, 375), (2000, 100), (12, 900)]:
        w, h = load_image(save_image(tmp_path / "x.png", size), spec).size
        assert w % 32 == 0 and h % 32 == 0 and spec.min_pixels <= w * h <= spec.max_pixels, size


def test_load_image_converts_grayscale_and_rgba(tmp_path):
    Image.new("L", (56, 56), 7).save(tmp_path / "g.png")
    Image.new("RGBA", (56, 56), (1, 2, 3, 4)).save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        img = load_image(str(tmp_path / name), VisionSpec())
        assert img.mode == "RGB" and img.size == (56, 56)


def test_load_image_never_makes_a_zero_side(tmp_path):
    spec = VisionSpec(max_pixels=64 * 28 * 28)  # the tiny processors' budget
    w, h = load_image(save_image(tmp_path / "x.png", (50, 7000)), spec).size
    assert w >= spec.factor and h >= spec.factor and w % spec.factor == 0 and h % spec.factor == 0


@pytest.mark.parametrize("size", [(5, 64), (64, 5), (3, 3), (7, 7)])
def test_checking_a_jpeg_under_8_pixels_wide_or_high_counts_its_tokens(tmp_path, size):
    """check_image decodes JPEGs at 1/8 scale as a shortcut; an image less than 8 px on a side must still be read
    and counted as load_image would use it, not fail as unreadable."""
    from vqrl.data.media import check_image

    spec = VisionSpec()
    path = str(tmp_path / "thin.jpg")
    Image.new("RGB", size, (200, 30, 30)).save(path, format="JPEG")
    assert check_image(path, spec) == spec.image_tokens(size[1], size[0])
    assert check_image(path) == 0
    assert load_image(path, spec).mode == "RGB"


class _Header:
    """A video container whose header says `frames` frames of `width` x `height` (no frame decodes)."""

    def __init__(self, frames, height, width):
        ctx = type("Ctx", (), {"height": height, "width": width})()
        stream = type("Stream", (), {"average_rate": 25, "guessed_rate": None, "frames": frames, "duration": None,
                                     "time_base": None, "codec_context": ctx, "thread_type": None})()
        self.streams = type("Streams", (), {"video": [stream]})()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("frames, height, width", [(0, 64, 64), (10, 0, 64), (10, 64, 0), (10, 0, 0)])
def test_a_video_header_with_no_frames_or_no_size_is_a_media_error(monkeypatch, frames, height, width):
    """A header stating no frames, or frames of zero width or height, is refused with a clear reason: a video of
    no pixels would otherwise reach the processor (or divide by zero in the resize)."""
    from vqrl.data.media import MediaError, probe_video

    monkeypatch.setattr(av, "open", lambda path: _Header(frames, height, width))
    with pytest.raises(MediaError, match=rf"has no frames \({frames} frames of {width}x{height}\)"):
        probe_video("v.mp4")
    monkeypatch.setattr(av, "open", lambda path: _Header(10, 48, 64))
    assert probe_video("v.mp4") == (10, 48, 64, 25.0)


def test_a_video_header_without_a_frame_count_is_counted_from_its_duration(monkeypatch):
    """Some containers store no frame count: it is the duration (in the stream's time base) times the frame rate."""
    from fractions import Fraction

    from vqrl.data.media import probe_video

    header = _Header(0, 48, 64)
    stream = header.streams.video[0]
    stream.duration, stream.time_base = 300, Fraction(1, 100)  # 3 s at 25 fps
    monkeypatch.setattr(av, "open", lambda path: header)
    assert probe_video("v.mp4") == (75, 48, 64, 25.0)


def test_a_frame_already_at_its_target_size_is_not_resampled():
    from vqrl.data.media import _resize_frame

    pixels = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    same = _resize_frame(pixels, (56, 84))
    assert same.dtype == torch.uint8 and torch.equal(same, torch.from_numpy(pixels).permute(2, 0, 1))
    smaller = _resize_frame(pixels, (28, 56))
    assert smaller.shape == (3, 28, 56) and smaller.dtype == torch.uint8


@pytest.mark.parametrize("path", VIDEOS, ids=os.path.basename)
def test_load_video_examples(path):
    spec = VisionSpec()
    frames, meta = load_video(path, spec)
    assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[1] == 3
    t, _, h, w = frames.shape
    assert t % 2 == 0 and spec.video_min_frames <= t <= spec.video_max_frames
    assert h % spec.factor == 0 and w % spec.factor == 0
    assert t * h * w <= spec.video_total_pixels
    # the examples are 2 s at 8 fps: at video_fps 2 that is 4 frames, evenly spread
    assert meta["total_num_frames"] == 16 and meta["fps"] == pytest.approx(8.0)
    assert meta["frames_indices"] == [0, 5, 10, 15] and t == 4
    assert meta["duration"] == pytest.approx(2.0)
    assert frames.float().std() > 1  # real pixels, not a blank tensor


def test_load_video_samples_at_video_fps(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames=40, fps=10, width=64, height=48)
    frames, meta = load_video(path, VisionSpec())
    assert meta["total_num_frames"] == 40 and meta["fps"] == pytest.approx(10.0)
    assert frames.shape == (8, 3, 56, 56)  # 4 s at 2 fps; 64x48 -> the 56x56 minimum grid
    idx = meta["frames_indices"]
    assert idx[0] == 0 and idx[-1] == 39 and len(idx) == 8
    assert all(4 <= b - a <= 6 for a, b in zip(idx, idx[1:]))  # ~ native fps / video_fps apart
    # the picked frames are the ones the indices name (resized 64 -> 56 wide)
    strips = [(frames[k, :, 28, :].float().mean(0) > 127).sum().item() for k in range(len(idx))]
    assert all(abs(s - i * 56 / 64) <= 2 for s, i in zip(strips, idx)), (strips, idx)


def test_load_video_frame_count_limits(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames=40, fps=10)
    few, _ = load_video(path, VisionSpec(video_fps=0.25))  # 1 frame by fps -> raised to the minimum 4
    assert few.shape[0] == 4
    many, meta = load_video(path, VisionSpec(video_fps=10, video_max_frames=11))  # 40 by fps -> capped, even
    assert many.shape[0] == 10 and len(meta["frames_indices"]) == 10
    for total, fps in [(1, 25.0), (3, 25.0), (7, 1.0), (300, 30.0)]:
        n = len(video_frame_indices(total, fps, VisionSpec()))
        assert n % 2 == 0 and n >= 2 and n <= VisionSpec().video_max_frames


def test_load_video_respects_the_total_pixel_budget():
    spec = VisionSpec(video_total_pixels=4 * 2 * 3136)
    frames, _ = load_video(VIDEOS[0], spec)
    t, _, h, w = frames.shape
    assert t == 4 and h % 28 == 0 and w % 28 == 0
    assert t * h * w <= spec.video_total_pixels
    assert h * w < 112 * 168  # smaller than it is without the budget


def test_load_video_rejects_a_corrupt_file(tmp_path):
    """Random bytes named .mp4 are refused with a clear error: FFmpeg's "Invalid data", or, where its probe reads them
    as another format (seen once in CI: a subtitle stream), ours naming what streams it found. Seeded, several
    draws (os.urandom made this test flaky)."""
    from vqrl.data.media import MediaError

    bad = tmp_path / "bad.mp4"
    rng = np.random.default_rng(0)
    for _ in range(20):
        bad.write_bytes(rng.bytes(4096))
        with pytest.raises((av.error.InvalidDataError, MediaError), match="Invalid data|no video stream"):
            load_video(str(bad), VisionSpec())
    with pytest.raises(FileNotFoundError):
        load_video(str(tmp_path / "absent.mp4"), VisionSpec())


# ---------------------------------------------------------------------------------------------------------- prompts


def test_prompt_think_and_no_think():
    rec = scoring("x.jpg")
    think = prompt_text(rec, PromptConfig(think=True))
    plain = prompt_text(rec, PromptConfig(think=False))
    assert THINK_INSTRUCTION in think and NO_THINK_INSTRUCTION not in think and "<think>" in think
    assert NO_THINK_INSTRUCTION in plain and THINK_INSTRUCTION not in plain
    assert prompt_text(rec, PromptConfig(think=True), think=False) == plain  # per-call override
    assert QUESTIONS["scoring_image"] in think and "Score: 3.62" in think


def test_prompt_uses_the_record_question_unless_told_not_to():
    rec = scoring("x.jpg", question="  How good is this photo?  ")
    assert prompt_text(rec, PromptConfig()).splitlines()[0] == "How good is this photo?"
    cfg = PromptConfig(use_record_question=False, questions={"scoring_image": "Custom?"})
    assert prompt_text(rec, cfg).splitlines()[0] == "Custom?"
    assert prompt_text({"type": "scoring_video", "video": "v.mp4"}, PromptConfig()).startswith(QUESTIONS["scoring_video"])


def test_prompt_lists_options_with_letters():
    rec = {"type": "choice_image", "image": "x", "options": ["blur", "noise", "jpeg"], "solution": "C"}
    text = prompt_text(rec, PromptConfig())
    assert "Options: A. blur B. noise C. jpeg" in text
    assert "letter" in text
    already = {**rec, "question": "Which one? Options: A. blur B. noise C. jpeg"}
    assert prompt_text(already, PromptConfig()).count("A. blur") == 1


def test_prompt_full_reference_note():
    assert prompt_text({**scoring("x"), "reference": "r.png"}, PromptConfig()).startswith(REFERENCE_NOTE)
    assert REFERENCE_NOTE not in prompt_text(scoring("x"), PromptConfig())


def test_each_task_familys_whole_prompt_and_the_system_turn():
    """The exact text per task family (question, answer format, instruction, one per line) and the conversation."""
    from vqrl.data.prompts import ANSWER_FORMATS, format_score

    cases = {"distortion_image": "distortion", "grounding_image": "grounding", "choice_video": "choice",
             "scoring_video": "scoring", "rating_audio": "scoring"}
    for rtype, family in cases.items():
        question = QUESTIONS.get(rtype, QUESTIONS["scoring_image"])
        assert prompt_text({"type": rtype}, PromptConfig(think=False)) == "\n".join(
            [question, ANSWER_FORMATS[family], NO_THINK_INSTRUCTION]), rtype
    rec = {"type": "choice_image", "reference": "r.png", "question": " ", "options": ["blur", "noise"]}
    assert prompt_text(rec, PromptConfig()).splitlines() == [
        REFERENCE_NOTE, QUESTIONS["choice_image"], "Options: A. blur B. noise", ANSWER_FORMATS["choice"],
        THINK_INSTRUCTION]
    assert "Options:" not in prompt_text({**rec, "options": []}, PromptConfig())
    image = {"type": "image", "image": "pixels"}
    assert build_messages(scoring("x"), [image], PromptConfig(system_prompt="You rate images.")) == [
        {"role": "system", "content": [{"type": "text", "text": "You rate images."}]},
        {"role": "user", "content": [image, {"type": "text", "text": prompt_text(scoring("x"), PromptConfig())}]}]
    assert [m["role"] for m in build_messages(scoring("x"), [image], PromptConfig(system_prompt=""))] == ["user"]
    assert (format_score(3.625), format_score("4"), format_score(1.999)) == ("3.62", "4.00", "2.00")


# ---------------------------------------------------------------------------------------------------------- dataset


@pytest.fixture
def mixed_file(tmp_path):
    """3 good records (2 images, 1 video) and 3 bad ones, interleaved."""
    shutil.copy(os.path.join(EXAMPLES, "images", "camera.jpg"), tmp_path / "a.jpg")
    shutil.copy(os.path.join(EXAMPLES, "images", "coffee.jpg"), tmp_path / "b.jpg")
    shutil.copy(VIDEOS[0], tmp_path / "v.mp4")
    records = [
        scoring("a.jpg", 4.2),
        scoring("nope.jpg", 3.0),
        scoring("b.jpg", "2.5"),
        scoring("a.jpg", "bad"),
        {"video": "v.mp4", "solution": 3.3, "type": "scoring_video"},
        {"image": "a.jpg", "solution": 3.0, "type": "weird"},
    ]
    return write_json(tmp_path / "mixed.json", records)


def test_load_checked_records_error_lists_every_bad_record(mixed_file, tmp_path):
    cfg = DataConfig(files=[mixed_file], image_root=str(tmp_path), video_root=str(tmp_path))
    with pytest.raises(DataError) as info:
        load_checked_records(cfg)
    message = str(info.value)
    assert "3 bad record(s)" in message
    for index in (1, 3, 5):
        assert f"{mixed_file}:{index}: " in message
    for index in (0, 2, 4):
        assert f"{mixed_file}:{index}: " not in message


def test_load_checked_records_skip_keeps_the_good_ones(mixed_file, tmp_path):
    cfg = DataConfig(files=[mixed_file], image_root=str(tmp_path), video_root=str(tmp_path), on_bad_sample="skip")
    records = load_checked_records(cfg)
    assert [r["_index"] for r in records] == [0, 2, 4]
    assert all(os.path.isfile(r.get("image") or r.get("video")) for r in records)  # paths resolved to the roots
    with pytest.raises(ValueError, match="on_bad_sample must be 'error' or 'skip', got 'ignore'"):
        load_checked_records(DataConfig(files=[mixed_file], on_bad_sample="ignore"))


def test_load_checked_records_with_only_bad_records_fails_clearly(tmp_path):
    path = write_json(tmp_path / "d.json", [scoring("nope.jpg")])
    with pytest.raises(DataError, match=r"every image record is bad \(1 of 1"):
        load_checked_records(DataConfig(files=[path], image_root=str(tmp_path), on_bad_sample="skip"))


def _builder(records, spec=None, **kw):
    return RowBuilder(records, MediaLoader(spec or VisionSpec(max_pixels=64 * 28 * 28), None, None), PromptConfig(**kw))


def test_row_holds_image_then_text_and_reward_columns(mixed_file, tmp_path):
    records = load_checked_records(DataConfig(files=[mixed_file], image_root=str(tmp_path), video_root=str(tmp_path),
                                              on_bad_sample="skip"))
    builder = _builder(records)
    row = builder.row(1)
    (user,) = row["prompt"]
    assert user["role"] == "user"
    image_part, text_part = user["content"]
    assert image_part["type"] == "image" and isinstance(image_part["image"], Image.Image)
    w, h = image_part["image"].size
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 64 * 28 * 28
    assert text_part == {"type": "text", "text": prompt_text(records[1], PromptConfig())}
    assert row["solution"] == 2.5 and row["type"] == "scoring_image"  # numeric string parsed
    assert row["sample_id"] == records[1]["sample_id"]
    assert row["image_path"] == records[1]["image"] and row["video_path"] is None
    assert builder.failures == {}


def test_row_holds_video_tensor_and_metadata(mixed_file, tmp_path):
    records = load_checked_records(DataConfig(files=[mixed_file], image_root=str(tmp_path), video_root=str(tmp_path),
                                              on_bad_sample="skip"))
    row = _builder(records, think=False).row(2)
    video_part, text_part = row["prompt"][-1]["content"]
    assert video_part["type"] == "video"
    frames, meta = video_part["video"], video_part["video_metadata"]
    assert isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8 and frames.shape[:2] == (4, 3)
    assert meta["frames_indices"] == [0, 5, 10, 15] and meta["fps"] == pytest.approx(8.0)
    assert NO_THINK_INSTRUCTION in text_part["text"]
    assert row["solution"] == pytest.approx(3.3) and row["video_path"] == records[2]["video"]


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_media_that_breaks_after_loading_costs_one_sample_not_the_run(mixed_file, tmp_path, damage):
    records = load_checked_records(DataConfig(files=[mixed_file], image_root=str(tmp_path), video_root=str(tmp_path),
                                              on_bad_sample="skip"))
    target = tmp_path / "b.jpg"  # record 1
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(b"garbage" * 100)
    builder = _builder(records)
    row = builder.row(1)
    assert row["type"] == "scoring_video"  # replaced by the next record
    assert list(builder.failures) == [1]
    assert builder.row(1)["sample_id"] == records[2]["sample_id"]
    assert builder.row(0)["sample_id"] == records[0]["sample_id"]
    assert list(builder.failures) == [1]  # not retried, not counted twice


def test_no_decodable_record_raises_data_error(tmp_path):
    save_image(tmp_path / "a.jpg")
    records = load_checked_records(DataConfig(files=[write_json(tmp_path / "d.json", [scoring("a.jpg")])],
                                              image_root=str(tmp_path)))
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(DataError, match="1 of 1 records failed to decode during training"):
        _builder(records).row(0)


def test_train_dataset_builds_rows_on_access(mixed_file, tmp_path):
    records = load_checked_records(DataConfig(files=[mixed_file], image_root=str(tmp_path), video_root=str(tmp_path),
                                              on_bad_sample="skip"))
    ds = make_train_dataset(records, _builder(records))
    assert len(ds) == len(records)
    for i in (0, 2):
        row = ds[i]
        assert row["sample_id"] == records[i]["sample_id"]
        assert row["prompt"][-1]["content"][-1]["type"] == "text"
    assert isinstance(ds[0]["prompt"][-1]["content"][0]["image"], Image.Image)
    assert ds[2]["prompt"][-1]["content"][0]["type"] == "video"


def test_full_reference_row_shows_the_reference_first():
    data = os.path.join(EXAMPLES, "perception", "all.json")
    root = os.path.join(EXAMPLES, "perception")
    records = load_checked_records(DataConfig(files=[data], image_root=root))
    i = next(k for k, r in enumerate(records) if r.get("reference"))
    rec = records[i]
    spec = VisionSpec(max_pixels=64 * 28 * 28)
    row = _builder(records, spec).row(i)
    parts = row["prompt"][-1]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    ref, img = (np.asarray(p["image"]) for p in parts[:2])
    assert np.array_equal(ref, np.asarray(load_image(rec["reference"], spec)))
    assert np.array_equal(img, np.asarray(load_image(rec["image"], spec)))
    assert not np.array_equal(ref, img)
    assert parts[2]["text"].startswith(REFERENCE_NOTE)
    assert row["reference"] == rec["reference"] and row["solution"] == rec["solution"]
    assert row["distortion"] == rec.get("distortion")


# ------------------------------------------------------------------------------ media sized for the model's processor


@pytest.fixture(scope="module")
def tokenizer():
    from vqrl.models.tiny import train_tokenizer

    return train_tokenizer()


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_media_sized_by_the_processor_spec_is_not_resized_again(tokenizer, arch):
    """load_image/load_video with VisionSpec.for_processor give exactly the grid the processor uses, so pixels are
    resampled once and validate-data's token counts are the model's."""
    from vqrl.data.media import video_tokens
    from vqrl.models.tiny import build_processor

    proc = build_processor(arch, tokenizer)
    spec = VisionSpec.for_processor(proc)
    patch = proc.image_processor.patch_size
    img = load_image(os.path.join(EXAMPLES, "images", "camera.jpg"), spec)
    (grid,) = proc.image_processor(images=[img], return_tensors="pt")["image_grid_thw"].tolist()
    assert [grid[1] * patch, grid[2] * patch] == [img.height, img.width]
    assert spec.image_tokens(img.height, img.width) == grid[1] * grid[2] // 4

    frames, meta = load_video(VIDEOS[0], spec)
    kwargs = {"video_metadata": [meta]} if arch == "qwen3_vl" else {}
    (grid,) = proc.video_processor(videos=[frames], return_tensors="pt", **kwargs)["video_grid_thw"].tolist()
    assert grid[0] * 2 == frames.shape[0]
    assert [grid[1] * patch, grid[2] * patch] == list(frames.shape[-2:])
    assert video_tokens(frames.shape[0], meta["height"], meta["width"], spec) == grid[0] * grid[1] * grid[2] // 4


def test_pixel_budgets_reach_the_image_and_the_video_processor(tokenizer):
    """--min_pixels/--max_pixels set both processors; --video_max_pixels only the video one; unset keeps them; an
    image-only processor is fine. What the processors hold is what media sizing (VisionSpec) then follows."""
    from types import SimpleNamespace

    from vqrl.models.tiny import build_processor
    from vqrl.modeling.vision import set_pixel_budgets

    proc = build_processor("qwen2_5_vl", tokenizer)
    set_pixel_budgets(proc, min_pixels=8 * 28 * 28, max_pixels=64 * 28 * 28)
    set_pixel_budgets(proc, video_max_pixels=32 * 28 * 28)
    set_pixel_budgets(proc)
    spec = VisionSpec.for_processor(proc)
    assert (spec.min_pixels, spec.max_pixels) == (8 * 28 * 28, 64 * 28 * 28)
    assert (spec.video_min_pixels, spec.video_max_pixels) == (8 * 28 * 28, 32 * 28 * 28)
    image_only = SimpleNamespace(image_processor=SimpleNamespace(size={}))
    set_pixel_budgets(image_only, max_pixels=100)
    assert image_only.image_processor.size == {"longest_edge": 100}


def test_a_passed_in_processor_gets_the_runs_pixel_budgets(tiny_models, tmp_path):
    """build_trainer with its own model and processor (as `vqrl bench` calls it) applies --max_pixels too. It used
    to keep the processor's own budget: the bench's 1260 px image row silently ran at 980 px (1,225 visual tokens
    instead of 2,025)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trainer_utils import flags, write_records

    from vqrl.grpo import build_trainer, parse

    model_dir = tiny_models("qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    ip.size["longest_edge"] = 4 * factor * factor  # the passed-in processor's own budget: 4 visual tokens
    expected = VisionSpec.for_processor(processor, max_pixels=24 * factor * factor).image_tokens(300, 451)
    assert expected > 12
    Image.new("RGB", (451, 300), (90, 120, 30)).save(tmp_path / "wide.png")
    data = write_records(tmp_path / "d.json", [{"image": "wide.png", "solution": 4.5, "type": "scoring_image"}])
    args, model_args = parse(flags(model_dir, tmp_path / "out", [data], image_root=str(tmp_path),
                                   max_pixels=24 * factor * factor, per_device_train_batch_size=2))
    trainer = build_trainer(args, model_args, model=model, processor=processor)
    ids, _, _ = trainer._tokenize_prompts([trainer.train_dataset[0]["prompt"]])
    assert ids[0].count(model.config.image_token_id) == expected


def test_a_processor_that_states_no_pixel_floor_gets_qwens(tokenizer):
    """VisionSpec's own floors (used where a processor's config names none) are the Qwen2/2.5-VL processors':
    56×56 pixels for an image and for each video frame, so a tiny image or frame is brought up as Qwen's would be."""
    from types import SimpleNamespace

    from vqrl.models.tiny import build_processor

    qwen = VisionSpec.for_processor(build_processor("qwen2_5_vl", tokenizer))
    bare = VisionSpec.for_processor(SimpleNamespace(image_processor=SimpleNamespace(patch_size=14, merge_size=2)))
    assert (bare.min_pixels, bare.video_min_pixels) == (qwen.min_pixels, qwen.video_min_pixels) == (56 * 56, 56 * 56)


def test_a_records_media_kind_is_its_types_else_its_media_keys():
    from vqrl.data.records import record_media_kind

    assert record_media_kind({"type": "scoring_video", "image": "x.jpg"}) == "video"  # the type decides
    assert record_media_kind({"type": "choice_image", "image": "x.jpg"}) == "image"
    assert record_media_kind({"image": "x.jpg"}) == "image"  # no type (a record to be reported): by its keys
    assert record_media_kind({"type": "nonsense", "video": "v.mp4"}) == "video"
    assert record_media_kind({"type": ["scoring_image"]}) is None and record_media_kind({}) is None


def test_problems_are_listed_in_file_order_each_files_own_first(tmp_path):
    """The problem list follows the order of the data files; within one, what concerns the whole file comes first,
    then its records by index (not the order the checks happened to find them in)."""
    from vqrl.data.dataset import load_records

    save_image(tmp_path / "x.jpg", (64, 64))
    good = {"image": "x.jpg", "solution": 3, "type": "scoring_image"}
    (tmp_path / "a.json").write_text(json.dumps([good, {"solution": 2, "type": "scoring_image"}]) + " [1]")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"image": "x.jpg", "solution": 9, "type": "scoring_image"}, good,
        {"image": "nope.jpg", "solution": 2, "type": "scoring_image"}]))
    files = [str(tmp_path / "b.jsonl"), str(tmp_path / "a.json")]
    records, problems, _ = load_records(DataConfig(files=files, image_root=str(tmp_path), decode=False))
    assert [(os.path.basename(p.file), p.index) for p in problems] == [("b.jsonl", 0), ("b.jsonl", 2),
                                                                        ("a.json", None), ("a.json", 1)]
    assert "content after the closing ']'" in problems[2].reason and len(records) == 2


def test_image_and_video_records_are_found_under_their_own_roots(tmp_path):
    from vqrl.data.checks import media_reasons

    (tmp_path / "pics").mkdir()
    (tmp_path / "clips").mkdir()
    save_image(tmp_path / "pics" / "x.jpg", (64, 64))
    shutil.copy(VIDEOS[0], tmp_path / "clips" / "v.mp4")
    image = {"image": "x.jpg", "solution": 3, "type": "scoring_image"}
    video = {"video": "v.mp4", "solution": 3, "type": "scoring_video"}
    roots = (str(tmp_path / "pics"), str(tmp_path / "clips"))
    assert media_reasons(image, *roots) == ([], 0) and media_reasons(video, *roots) == ([], 0)
    (reason,), _ = media_reasons(video, roots[1], roots[0])  # roots swapped: named, not guessed
    assert reason.startswith("unreadable video " + os.path.join(roots[0], "v.mp4"))


def test_frames_of_a_video_with_no_known_frame_rate_are_still_chosen():
    """A stream that reports 0 fps (unknown) is sampled as if one frame were one second, not divided by zero."""
    spec = VisionSpec(video_fps=2.0, video_min_frames=4, video_max_frames=16)
    assert video_frame_indices(10, 0.0, spec) == np.linspace(0, 9, 10).round().astype(int).tolist()
    assert video_frame_indices(10, 5.0, spec) == [0, 3, 6, 9]  # 2 s at 2 fps, raised to the 4-frame floor


def test_frame_indices_follow_the_fps_clamped_to_the_frame_bounds_and_even():
    """n = duration x video_fps, within [video_min_frames, video_max_frames] and never more than the clip holds,
    rounded down to even (at least 2), spread evenly over the whole clip (first and last frame included)."""
    spec = VisionSpec(video_fps=2.0, video_min_frames=4, video_max_frames=16)
    assert video_frame_indices(90, 30.0, spec) == [0, 18, 36, 53, 71, 89]  # 3 s: 6 frames
    assert video_frame_indices(105, 30.0, spec) == [0, 21, 42, 62, 83, 104]  # 3.5 s: 7 frames, made even: 6
    assert video_frame_indices(600, 30.0, spec) == np.linspace(0, 599, 16).round().astype(int).tolist()  # capped
    assert video_frame_indices(3, 30.0, spec) == [0, 2]  # fewer frames than the floor: all it has, made even
    assert video_frame_indices(1, 30.0, spec) == [0, 0]  # one frame: shown twice (a temporal patch is 2)
    assert video_frame_indices(0, 30.0, spec) == [0, 0]
    assert video_frame_indices(45, 30.0, VisionSpec(video_fps=4.0, video_min_frames=2)) == [0, 9, 18, 26, 35, 44]


def test_vision_tokens_of_images_and_videos_follow_the_budgets():
    from vqrl.data.media import video_tokens

    spec = VisionSpec()  # factor 28
    assert spec.image_tokens(280, 560) == 10 * 20
    assert spec.image_tokens(20, 3000) == 1 * 107  # a 20-pixel side rounds to one factor
    small = VisionSpec(max_pixels=56 * 56, min_pixels=28 * 28)
    assert small.image_tokens(1000, 1000) == 4
    per_frame = VisionSpec(video_max_pixels=56 * 56, video_total_pixels=10**9)
    assert video_tokens(4, 1000, 1000, per_frame) == 2 * 4  # frames in pairs, each pair 2x2 patches
    assert video_tokens(5, 1000, 1000, per_frame) == 3 * 4  # an odd frame count still takes a whole pair
    total = VisionSpec(video_max_pixels=10**7, video_total_pixels=4 * 84 * 84)
    assert video_tokens(4, 1000, 1000, total) == 2 * 9  # the total budget split over 4 frames: 84x84 each
    assert video_tokens(2, 1000, 1000, total) == 1 * 16  # over 2 frames: 118x118 floored to 112x112 each


# ------------------------------------------------------------------------------------- nothing silently wrong (#20)


def write_audio_only_mp4(path) -> str:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def write_zero_frame_mp4(path) -> str:
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.start_encoding()  # a header, and not one frame
    container.close()
    return str(path)


def test_file_labels_tell_same_named_files_apart():
    from vqrl.data.records import file_labels

    assert file_labels(["/d/koniq.json", "/d/spaq.jsonl"]) == ["koniq", "spaq"]  # unique stems stay as they were
    assert file_labels(["/d/koniq/train.json", "/d/spaq/train.json", "/d/x/test.json"]) == [
        "koniq/train", "spaq/train", "test"]
    assert file_labels(["/a/x/train.json", "/b/x/train.json"]) == ["a/x/train", "b/x/train"]
    assert file_labels(["/d/a.json", "/d/a.json"]) == ["a", "a#2"]


def test_same_named_data_files_give_distinct_sample_ids_and_rows(tmp_path):
    """koniq/train.json and spaq/train.json used to give both of their first records the id train:0, and the trainer
    encodes one prompt per sample_id: one record was shown the other's image."""
    for name, color in (("koniq", (250, 0, 0)), ("spaq", (0, 0, 250))):
        (tmp_path / name).mkdir()
        save_image(tmp_path / name / "0.png", color=color)
        write_json(tmp_path / name / "train.json", [scoring(f"{name}/0.png", 2.0 if name == "koniq" else 4.0)])
    files = [str(tmp_path / "koniq" / "train.json"), str(tmp_path / "spaq" / "train.json")]
    records = load_checked_records(DataConfig(files=files, image_root=str(tmp_path)))
    assert [r["sample_id"] for r in records] == ["koniq/train:0", "spaq/train:0"]
    builder = _builder(records)
    rows = [builder.row(i) for i in range(2)]
    assert [r["sample_id"] for r in rows] == ["koniq/train:0", "spaq/train:0"]
    reds = [np.asarray(r["prompt"][-1]["content"][0]["image"])[..., 0].mean() for r in rows]
    assert reds[0] > 200 and reds[1] < 50 and [r["solution"] for r in rows] == [2.0, 4.0]


def test_explicit_sample_ids_repeated_across_files_become_distinct(tmp_path, caplog):
    save_image(tmp_path / "a.png")
    a = write_json(tmp_path / "a.json", [scoring("a.png", sample_id="x"), scoring("a.png", sample_id="y")])
    b = write_json(tmp_path / "b.json", [scoring("a.png", sample_id="x")])
    with caplog.at_level("WARNING"):
        records = load_checked_records(DataConfig(files=[a, b], image_root=str(tmp_path), weights=[2, 1]))
    assert [r["sample_id"] for r in records] == ["x", "y", "x#1", "y#1", "x#2"]
    assert "1 record(s) share their sample_id with another record" in caplog.text  # b's x, not a's weight repeats
    assert f"{a}:0 and {b}:0" in caplog.text


def test_an_empty_list_is_a_problem_not_a_pass(tmp_path, capsys):
    path = write_json(tmp_path / "d.json", [])
    (problem,) = read_records(path).problems
    assert str(problem) == f"{path}: the list holds no records ([])"
    code, out, _ = validate_in_process(capsys, path)
    assert code == 1 and out == f"{path}: the list holds no records ([])\n"


def test_records_wrapped_in_an_object_say_so(tmp_path):
    path = write_json(tmp_path / "d.json", {"data": [scoring("a.jpg"), scoring("b.jpg")]})
    result = read_records(path)
    assert result.records == []
    (problem,) = result.problems
    assert problem.index is None and "holding a list under 'data', not a list of records" in problem.reason
    assert "jq '.data' d.json" in problem.reason
    one = tmp_path / "one.json"
    one.write_text(json.dumps(scoring("a.jpg"), indent=2))
    (problem,) = read_records(one).problems
    assert "one JSON object spread over several lines" in problem.reason
    (tmp_path / "ok.jsonl").write_text(json.dumps(scoring("a.jpg")) + "\n")  # one-line JSONL stays fine
    assert len(read_records(tmp_path / "ok.jsonl").records) == 1


def test_an_image_list_is_named_as_such(image_dir):
    (reason,) = check_record(scoring(["ok.jpg", "ok.jpg"]), image_dir)
    assert reason == "field 'image' is a list of 2; a record takes one image path (a string): write one record per file"
    (reason,) = check_record(scoring(7), image_dir)
    assert reason == "field 'image' must be a path (a string), got int 7"
    (reason,) = check_record({**scoring("ok.jpg"), "reference": ["ok.jpg"]}, image_dir)
    assert "field 'reference' is a list of 1" in reason


def test_16_bit_grey_png_loads_scaled_not_white(tmp_path):
    values = np.tile(np.linspace(0, 65535, 56).astype(np.uint16), (56, 1))
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    img = np.asarray(load_image(str(tmp_path / "g16.png"), VisionSpec()))
    assert img.shape == (56, 56, 3)
    np.testing.assert_allclose(img[0, :, 0], np.round(values[0] / 257), atol=1)
    assert abs(img.mean() - 127.5) < 2  # PIL's own convert gives ~254 (clipped to white)


def test_16_bit_grey_black_and_white_stay_exactly_black_and_white(tmp_path):
    from vqrl.data.media import decode_image

    values = np.zeros((8, 8), dtype=np.uint16)
    values[:, 4:] = 65535
    Image.fromarray(values).save(tmp_path / "bw16.png")
    img = np.asarray(decode_image(str(tmp_path / "bw16.png")))
    assert img.shape == (8, 8, 3) and set(np.unique(img[:, :4])) == {0} and set(np.unique(img[:, 4:])) == {255}


def test_float_tiff_on_0_1_loads_scaled_and_others_are_refused(tmp_path):
    values = np.tile(np.linspace(0, 1, 56, dtype=np.float32), (56, 1))
    Image.fromarray(values).save(tmp_path / "f.tif")
    img = np.asarray(load_image(str(tmp_path / "f.tif"), VisionSpec()))
    np.testing.assert_allclose(img[0, :, 1], np.round(values[0] * 255), atol=1)
    assert abs(img.mean() - 127.5) < 2  # PIL's own convert gives ~0 (black)
    from vqrl.data.media import MediaError

    Image.fromarray(values * 1000).save(tmp_path / "hdr.tif")
    with pytest.raises(MediaError, match=r"floating-point grey image with values in \[0, 1000\]"):
        load_image(str(tmp_path / "hdr.tif"), VisionSpec())
    Image.fromarray(np.full((8, 8), 400000, dtype=np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(MediaError, match="32-bit integer grey image .* outside the 16-bit range"):
        load_image(str(tmp_path / "i32.tif"), VisionSpec())


@pytest.mark.parametrize("bad", [dict(max_pixels=-5), dict(min_pixels=0), dict(video_max_frames=0),
                                 dict(video_max_frames=1), dict(video_fps=0), dict(max_pixels=100, min_pixels=200)])
def test_vision_budgets_that_would_silently_change_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "min_pixels" not in bad or len(bad) == 1 else "below"):
        VisionSpec(**bad)
    assert VisionSpec(video_max_frames=2).video_max_frames == 2


def test_video_max_frames_message_says_why():
    with pytest.raises(ValueError, match="at least 2, got 0: Qwen-VL encodes video frames in pairs"):
        VisionSpec(video_max_frames=0)


def test_validate_data_names_bad_bit_depths_and_videos_without_frames(tmp_path, capsys):
    Image.fromarray(np.full((8, 8), 5.0, dtype=np.float32)).save(tmp_path / "hdr.tif")
    write_audio_only_mp4(tmp_path / "audio.mp4")
    write_zero_frame_mp4(tmp_path / "empty.mp4")
    path = write_json(tmp_path / "d.json", [scoring("hdr.tif"),
                                            {"video": "audio.mp4", "solution": 3.0, "type": "scoring_video"},
                                            {"video": "empty.mp4", "solution": 3.0, "type": "scoring_video"}])
    code, out, _ = validate_in_process(capsys, path, "--image_root", tmp_path, "--video_root", tmp_path)
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 3, out
    assert lines[0].startswith(f"{path}:0: unusable image") and "floating-point grey image" in lines[0]
    assert lines[1] == (f"{path}:1: unusable video {tmp_path / 'audio.mp4'}: "
                        "no video stream in the file (streams: audio)")
    assert lines[2].startswith(f"{path}:2: unusable video") and "no video stream in the file" in lines[2]
    assert "IndexError" not in out
    from vqrl.data.media import MediaError

    with pytest.raises(MediaError, match=r"no video stream in the file \(streams: audio\)"):
        load_video(str(tmp_path / "audio.mp4"), VisionSpec())


@pytest.mark.parametrize("name", ["factor", "min_pixels", "max_pixels", "video_min_frames", "video_min_pixels",
                                  "video_max_pixels", "video_total_pixels"])
def test_a_budget_of_one_is_the_smallest_accepted_and_zero_is_refused(name):
    small = {"min_pixels": 1, "video_min_pixels": 1, name: 1}
    spec = VisionSpec(**small)
    assert getattr(spec, name) == 1
    with pytest.raises(ValueError, match=rf"^{name} must be at least 1, got 0$"):
        VisionSpec(**{**small, name: 0})


def test_validate_data_refuses_settings_training_would_refuse(tmp_path, capsys):
    path = write_json(tmp_path / "d.json", [scoring("a.jpg")])
    code, out, err = validate_in_process(capsys, path, "--video_max_frames", "0")
    assert code == 2 and out == "" and err.startswith("vqrl validate-data: video_max_frames must be at least 2, got 0")
    code, _, err = validate_in_process(capsys, path, "--max_pixels", "-5")
    assert code == 2 and "max_pixels must be at least 1, got -5" in err
    code, _, err = validate_in_process(capsys, path, "--max_prompt_length", "100")
    assert code == 2 and "--max_prompt_length needs --model" in err


@pytest.fixture
def broken_images(tmp_path):
    """Two good images, a truncated JPEG and a text file named .jpg: each passes a file-exists check."""
    shutil.copy(os.path.join(EXAMPLES, "images", "camera.jpg"), tmp_path / "a.jpg")
    shutil.copy(os.path.join(EXAMPLES, "images", "coffee.jpg"), tmp_path / "b.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    records = [scoring("a.jpg"), scoring("cut.jpg"), scoring("b.jpg"), scoring("text.jpg"), scoring("a.jpg", 2.0)]
    return write_json(tmp_path / "d.json", records)


def test_training_decodes_every_image_before_step_1(broken_images, tmp_path):
    """The README says training runs validate-data's checks: a truncated JPEG and a text file named .jpg used to
    pass (only existence was checked) and were swapped for other records mid-run."""
    with pytest.raises(DataError) as info:
        load_checked_records(DataConfig(files=[broken_images], image_root=str(tmp_path)))
    message = str(info.value)
    assert message.startswith("2 bad record(s)")
    assert f"{broken_images}:1: unreadable image {tmp_path / 'cut.jpg'}: OSError: image file is truncated" in message
    assert f"{broken_images}:3: unreadable image {tmp_path / 'text.jpg'}: UnidentifiedImageError" in message
    records = load_checked_records(DataConfig(files=[broken_images], image_root=str(tmp_path), on_bad_sample="skip"))
    assert [r["_index"] for r in records] == [0, 2, 4]
    # the same problems, word for word, as validate-data reports
    from vqrl.data.validate import validate_files

    assert [str(p) for p in validate_files([broken_images], str(tmp_path))] == message.splitlines()[1:]


def test_skip_refuses_a_setup_where_every_image_fails(tmp_path):
    shutil.copy(VIDEOS[0], tmp_path / "v.mp4")
    records = [scoring("missing1.jpg"), scoring("missing2.jpg"),
               {"video": "v.mp4", "solution": 3.0, "type": "scoring_video"},
               {"video": "v.mp4", "solution": 4.0, "type": "scoring_video"},
               {"video": "v.mp4", "solution": 2.0, "type": "scoring_video"}]
    path = write_json(tmp_path / "d.json", records)
    cfg = DataConfig(files=[path], image_root=str(tmp_path / "wrong_root"), video_root=str(tmp_path),
                     on_bad_sample="skip")
    with pytest.raises(DataError, match=r"setup looks wrong.*every image record is bad \(2 of 2: check --image_root"
                                        r".*; e\.g\. .*d\.json:0: image file not found"):
        load_checked_records(cfg)


def test_skip_refuses_more_than_half_bad_and_a_file_with_no_good_record(tmp_path):
    save_image(tmp_path / "ok.png")
    many = write_json(tmp_path / "many.json", [scoring("ok.png"), scoring("ok.png", 9), scoring("ok.png", "x")])
    with pytest.raises(DataError, match=r"2 of 3 records are bad \(more than 50%\)"):
        load_checked_records(DataConfig(files=[many], image_root=str(tmp_path), on_bad_sample="skip"))
    good = write_json(tmp_path / "good.json", [scoring("ok.png")] * 4)
    empty = write_json(tmp_path / "empty.json", [])
    with pytest.raises(DataError, match=f"no usable record in {empty}"):
        load_checked_records(DataConfig(files=[good, empty], image_root=str(tmp_path), on_bad_sample="skip"))
    half = write_json(tmp_path / "half.json", [scoring("ok.png"), scoring("ok.png", 9)])  # 50%: isolated, skipped
    assert len(load_checked_records(DataConfig(files=[half], image_root=str(tmp_path), on_bad_sample="skip"))) == 1


def test_media_that_stop_decoding_for_most_records_mid_run_stop_the_run(tmp_path):
    for name in "abcd":
        save_image(tmp_path / f"{name}.png")
    path = write_json(tmp_path / "d.json", [scoring(f"{n}.png") for n in "abcd"])
    records = load_checked_records(DataConfig(files=[path], image_root=str(tmp_path)))
    builder = _builder(records)
    for name in "abc":
        (tmp_path / f"{name}.png").unlink()  # the storage went away
    with pytest.raises(DataError, match="3 of 4 records failed to decode during training"):
        builder.row(0)


def test_distributed_media_checks_share_the_work_and_the_answer(tmp_path, monkeypatch):
    """Under torch.distributed each rank decodes every world-th record and all ranks get every answer, so they keep
    the same records."""
    import torch.distributed as dist

    from vqrl.data import checks

    save_image(tmp_path / "ok.png")
    records = [{**scoring(str(tmp_path / ("ok.png" if i % 3 else "gone.png"))), "i": i} for i in range(7)]
    checked = []
    real = checks.media_reasons
    monkeypatch.setattr(checks, "media_reasons", lambda rec, *a: (checked.append(rec["i"]), real(rec, *a))[1])
    other_rank = {0: ["from rank 0"]}
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: out.__setitem__(slice(None), [other_rank, mine]))
    found = checks.check_media(records)
    assert sorted(checked) == [1, 3, 5]  # rank 1 of 2
    assert sorted(found) == [0, 3] and found[0] == ["from rank 0"] and "gone.png" in found[3][0]


# ------------------------------------------------------------------------- prompt length counts the vision tokens


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_prompt_length_check_counts_vision_tokens(tokenizer, tmp_path, arch):
    """validate-data and training refuse a prompt whose text fits but whose image does not: the count is the real
    prompt length (the processor's own encoding, as the trainer makes it), vision tokens included."""
    from vqrl.data.validate import validate_files
    from vqrl.models.tiny import build_processor
    from vqrl.modeling import vision as V

    proc = build_processor(arch, tokenizer)
    spec = VisionSpec.for_processor(proc)
    save_image(tmp_path / "small.png", (32, 32))
    save_image(tmp_path / "big.png", (400, 300))
    path = write_json(tmp_path / "d.json", [scoring("small.png"), scoring("big.png")])
    records = read_records(path).records
    true = []
    for rec in records:
        img = load_image(str(tmp_path / rec["image"]), spec)
        ids, _ = V.encode_prompt(proc, build_messages(rec, [{"type": "image", "image": img}], PromptConfig()))
        true.append(len(ids))
    assert true[1] - true[0] >= 40  # the images differ in tokens, the texts do not
    for limit in (true[0], true[1] - 1):  # the small prompt fits, the big one does not
        problems = validate_files([path], str(tmp_path), processor=proc, max_prompt_length=limit)
        assert [p.index for p in problems] == [1], (limit, true)
        assert "over max_prompt_length" in problems[0].reason
    assert problems[0].reason.startswith(f"prompt is ~{true[1]} tokens with its image/video tokens")
    assert validate_files([path], str(tmp_path), processor=proc, max_prompt_length=true[1]) == []
    # training applies the same check to the same records
    with pytest.raises(DataError, match=r"d.json:1: prompt is ~\d+ tokens"):
        load_checked_records(DataConfig(files=[path], image_root=str(tmp_path)), spec, proc, PromptConfig(),
                             max_prompt_length=true[0])


def test_prompt_length_of_a_video_record_is_the_processors(tokenizer, tmp_path):
    from vqrl.data import checks
    from vqrl.data.checks import prompt_tokens
    from vqrl.data.media import probe_video, video_tokens
    from vqrl.models.tiny import build_processor
    from vqrl.modeling import vision as V

    proc = build_processor("qwen2_5_vl", tokenizer)
    spec = VisionSpec.for_processor(proc)
    rec = {"video": VIDEOS[0], "type": "scoring_video", "solution": 3.0}
    frames, meta = load_video(VIDEOS[0], spec)
    part = {"type": "video", "video": frames, "video_metadata": meta}
    ids, _ = V.encode_prompt(proc, build_messages(rec, [part], PromptConfig()))
    n, h, w, fps = probe_video(VIDEOS[0])
    tokens = video_tokens(len(video_frame_indices(n, fps, spec)), h, w, spec)
    assert prompt_tokens(rec, proc, PromptConfig(), tokens) == len(ids)
    # the checks count the video's tokens themselves: a video prompt over the limit only by them is reported
    assert checks.media_reasons(rec, None, None, spec) == ([], tokens)
    from vqrl.data.validate import validate_files

    path = write_json(tmp_path / "v.json", [rec])
    assert validate_files([path], processor=proc, max_prompt_length=len(ids)) == []
    (problem,) = validate_files([path], processor=proc, max_prompt_length=len(ids) - 1)
    assert problem.reason.startswith(f"prompt is ~{len(ids)} tokens with its image/video tokens")


def test_media_of_a_conversation_skips_text_only_messages_and_keeps_order():
    from vqrl.modeling.vision import media_of

    frames = torch.zeros(2, 3, 28, 28, dtype=torch.uint8)
    prompt = [{"role": "system", "content": "You rate images."},
              {"role": "user", "content": [{"type": "image", "image": "ref"}, {"type": "text", "text": "and"},
                                           {"type": "image", "image": "img"}]},
              {"role": "assistant", "content": "noted"},
              {"role": "user", "content": [{"type": "video", "video": frames, "video_metadata": {"fps": 2.0}}]}]
    images, videos, metas = media_of(prompt)
    assert images == ["ref", "img"] and len(videos) == 1 and videos[0] is frames and metas == [{"fps": 2.0}]


def test_a_record_whose_prompt_cannot_be_counted_is_one_problem_not_a_crash(tokenizer, tmp_path, monkeypatch):
    from vqrl.data import checks
    from vqrl.data.validate import validate_files
    from vqrl.models.tiny import build_processor

    proc = build_processor("qwen2_5_vl", tokenizer)
    Image.new("RGB", (56, 56)).save(tmp_path / "ok.jpg")
    path = write_json(tmp_path / "d.json", [scoring("ok.jpg"), scoring("ok.jpg")])
    real = checks.prompt_tokens

    def flaky(rec, *args, **kwargs):
        if flaky.calls == 0:
            flaky.calls += 1
            raise ValueError("the chat template failed")
        return real(rec, *args, **kwargs)

    flaky.calls = 0
    monkeypatch.setattr(checks, "prompt_tokens", flaky)
    problems = validate_files([path], str(tmp_path), processor=proc, max_prompt_length=4096)
    assert [p.reason for p in problems] == ["cannot count the prompt's tokens: ValueError: the chat template failed"]


def test_load_eval_records_gives_the_usable_records_and_the_problem_lines(tmp_path):
    from vqrl.eval.records import load_eval_records

    Image.new("RGB", (56, 56)).save(tmp_path / "ok.jpg")
    path = write_json(tmp_path / "d.json", [scoring("ok.jpg"), scoring("missing.jpg")])
    records, problems = load_eval_records([path], str(tmp_path), None)
    assert [r["image"] for r in records] == [str(tmp_path / "ok.jpg")]  # resolved under the root
    assert len(problems) == 1 and problems[0].startswith(f"{path}:1: ") and "missing.jpg" in problems[0]


def test_the_prompt_length_check_counts_an_image_under_the_given_spec_or_else_the_processors(tokenizer, tmp_path):
    """check_media and validate_read count an image's tokens under the spec they are given (--max_pixels), and under
    the processor's own spec when given none: the same prompt fits a smaller pixel budget and not the processor's."""
    from vqrl.data import checks
    from vqrl.data.records import read_files
    from vqrl.data.validate import validate_read
    from vqrl.models.tiny import build_processor

    proc = build_processor("qwen2_5_vl", tokenizer)
    own = VisionSpec.for_processor(proc)
    small = VisionSpec.for_processor(proc, max_pixels=own.min_pixels)
    save_image(tmp_path / "big.png", (400, 300))
    path = write_json(tmp_path / "d.json", [scoring("big.png")])
    results = read_files([path], str(tmp_path))
    records = results[0].records
    text = checks.prompt_tokens(records[0], proc, PromptConfig(), 0)
    big, little = own.image_tokens(300, 400), small.image_tokens(300, 400)
    assert big - little >= 40
    limit = text + little  # fits under the small budget, not under the processor's
    reason = (f"prompt is ~{text + big} tokens with its image/video tokens, over max_prompt_length {limit}: lower "
              "max_pixels / frames, or raise the limit")
    assert checks.check_media(records, None, proc, PromptConfig(), limit) == {0: [reason]}
    assert checks.check_media(records, small, proc, PromptConfig(), limit) == {}
    assert checks.check_media(records, small, proc, PromptConfig(), limit - 1) == {0: [reason.replace(
        f"~{text + big} tokens", f"~{text + little} tokens").replace(f"length {limit}:", f"length {limit - 1}:")]}
    assert checks.check_media(records) == {}  # no processor: media only, no spec needed
    assert [p.reason for p in validate_read(results, processor=proc, max_prompt_length=limit)] == [reason]
    assert validate_read(results, processor=proc, max_prompt_length=limit, spec=small) == []
    assert validate_read(results) == []  # no processor, no spec: decoding only


def test_the_entries_of_a_file_are_its_records_plus_the_entries_that_did_not_parse(tmp_path):
    """entries is the base of the bad-share rules: a file-level problem (index None) is no entry."""
    from vqrl.data.records import LoadResult, Problem

    result = LoadResult(records=[{}, {}, {}], problems=[Problem("f", 1, "bad"), Problem("f", None, "whole file"),
                                                        Problem("f", 4, "bad")])
    assert result.entries == 5
    assert LoadResult().entries == 0
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(scoring("a.png")) + "\n{not json\n" + json.dumps(scoring("b.png")) + "\n")
    read = read_records(path)
    assert (len(read.records), len(read.problems), read.entries) == (2, 1, 3)


def test_roots_are_one_for_every_file_or_one_per_file_in_order():
    from vqrl.data.records import roots_per_file

    assert roots_per_file(None, 2, "--image_root") == [None, None]
    assert roots_per_file("r", 3, "--image_root") == ["r", "r", "r"]
    assert roots_per_file(["r"], 2, "--image_root") == ["r", "r"]
    assert roots_per_file(("a", "b"), 2, "--image_root") == ["a", "b"]
    with pytest.raises(ValueError, match=r"^got 3 --image_root values for 2 data files: give one, or one per file$"):
        roots_per_file(["a", "b", "c"], 2, "--image_root")


def test_the_media_cache_keeps_the_last_cache_size_media_used(tmp_path, monkeypatch):
    """The LRU cache holds exactly cache_size media and drops the least recently used: TRL asks for each prompt
    num_generations times, and each ask beyond the cache decodes the file again."""
    decoded = []
    real = MediaLoader._decode
    monkeypatch.setattr(MediaLoader, "_decode", lambda self, kind, path: (decoded.append(os.path.basename(path)),
                                                                          real(self, kind, path))[1])
    names = [save_image(tmp_path / f"{c}.png") for c in "abc"]
    loader = MediaLoader(VisionSpec(), None, None, cache_size=2)
    for name in "ababcbab":
        (part,) = loader.parts(scoring(names["abc".index(name)]))
        assert part["type"] == "image" and part["image"].size == (56, 56)
    assert decoded == ["a.png", "b.png", "c.png", "a.png"]  # c evicts a (b was used last), a evicts c


def test_check_record_accepts_each_bound_and_names_the_rule_it_breaks(image_dir):
    """The bounds themselves are valid (MOS 1 and 5, the first and last option letter in either case, two options);
    each broken rule is said exactly."""
    for mos in (1, 1.0, "5", 5.0, " 3 "):
        assert check_record(scoring("ok.jpg", mos), image_dir) == [], mos
    assert check_record(scoring("ok.jpg", 5.5), image_dir) == ["solution 5.5 is outside the MOS range [1, 5]"]
    assert check_record(scoring("ok.jpg", "x"), image_dir) == ["solution 'x' is not a number"]
    rec = {"image": "ok.jpg", "type": "choice_image", "options": ["blur", "noise"], "solution": "A"}
    for letter in ("A", "b", " B "):
        assert check_record({**rec, "solution": letter}, image_dir) == [], letter
    assert check_record({**rec, "solution": "C"}, image_dir) == ["solution 'C' is not an option letter A..B"]
    assert check_record({**rec, "solution": "@"}, image_dir) == ["solution '@' is not an option letter A..B"]
    assert check_record({**rec, "options": "blur, noise"}, image_dir) == [
        "choice record needs 'options', a list of at least 2 texts"]
    box = {"image": "ok.jpg", "type": "grounding_image", "solution": [0.5, 1, 0.75, 2.0]}
    assert check_record(box, image_dir) == []
    assert check_record({**box, "solution": [0, 0, 1, 1, 1]}, image_dir) == [
        "solution [0, 0, 1, 1, 1] is not a box [x1, y1, x2, y2] with x1<x2, y1<y2"]
    assert check_record({"image": "ok.jpg", "type": "distortion_image", "solution": 3}, image_dir) == [
        "solution 3 should be a non-empty string"]
    assert check_record({**scoring("ok.jpg"), "image": ["a.jpg", "b.jpg"]}, image_dir) == [
        "field 'image' is a list of 2; a record takes one image path (a string): write one record per file"]
    assert check_record({**scoring("ok.jpg"), "reference": 7}, image_dir) == [
        "field 'reference' must be a path (a string), got int 7"]


def test_the_error_policy_lists_every_problem_in_file_order_up_to_fifty(tmp_path):
    """--on_bad_sample error: one line per problem, sorted by file (as given) then entry, file-level problems first,
    at most 50 lines and then how many more."""
    save_image(tmp_path / "ok.png")
    a = tmp_path / "a.jsonl"
    a.write_text("\n".join([json.dumps(scoring("gone.png")), json.dumps(scoring("ok.png")), "{broken",
                            json.dumps(scoring("ok.png", 7))]) + "\n")
    b = tmp_path / "b.json"
    b.write_text("[]")
    cfg = DataConfig(files=[str(b), str(a)], image_root=str(tmp_path), decode=False)
    with pytest.raises(DataError) as refused:
        load_checked_records(cfg)
    assert str(refused.value).splitlines() == [
        "4 bad record(s); fix them or pass --on_bad_sample skip:",
        f"{b}: the list holds no records ([])",
        f"{a}:0: image file not found: {tmp_path / 'gone.png'}",
        f"{a}:2: invalid JSON at line 3 column 2: Expecting property name enclosed in double quotes",
        f"{a}:3: solution 7.0 is outside the MOS range [1, 5]"]
    for n, tail in ((50, []), (51, ["... and 1 more"])):
        path = write_json(tmp_path / f"many{n}.json", [scoring(f"gone{i}.png") for i in range(n)] + [scoring("ok.png")])
        with pytest.raises(DataError) as refused:
            load_checked_records(DataConfig(files=[path], image_root=str(tmp_path), decode=False))
        lines = str(refused.value).splitlines()
        assert lines[0] == f"{n} bad record(s); fix them or pass --on_bad_sample skip:"
        assert lines[1:] == [f"{path}:{i}: image file not found: {tmp_path / f'gone{i}.png'}" for i in range(50)] + tail


def test_records_weighted_to_nothing_are_no_usable_records(tmp_path):
    save_image(tmp_path / "ok.png")
    path = write_json(tmp_path / "d.json", [scoring("ok.png")])
    with pytest.raises(DataError, match=rf"^no usable records in {path}$"):
        load_checked_records(DataConfig(files=[path], image_root=str(tmp_path), weights=[0.0], decode=False))
    assert [r["_index"] for r in load_checked_records(DataConfig(files=[path], image_root=str(tmp_path),
                                                                 weights=[2.0], decode=False))] == [0, 0]


# ------------------------------------------------------------------- seed-5 survivors of the mutation sample

def test_a_video_whose_frames_cannot_be_decoded_is_refused_before_training(tmp_path):
    """A video whose header is intact but whose frame data is not (a cut download) must be found by the media check,
    which decodes the first frame, not only at the step that draws it."""
    from vqrl.data.checks import media_reasons

    good = write_video(tmp_path / "good.mp4", frames=20)
    data = bytearray((tmp_path / "good.mp4").read_bytes())
    start, moov = data.index(b"mdat") + 4, data.find(b"moov")
    assert moov > start  # the header (moov) follows the frame data (mdat) in this file: only the frames are zeroed
    data[start:moov - 4] = bytes(moov - 4 - start)
    (tmp_path / "cut.mp4").write_bytes(bytes(data))
    record = {"type": "scoring_video", "solution": 3.0}
    assert media_reasons({**record, "video": good}) == ([], 0)
    reasons, _ = media_reasons({**record, "video": str(tmp_path / "cut.mp4")})
    assert len(reasons) == 1 and reasons[0].startswith(f"unreadable video {tmp_path / 'cut.mp4'}: InvalidDataError")


def test_checking_and_loading_records_draw_no_progress_bar_unless_asked(tmp_path, capsys):
    """Library calls stay quiet on stderr by default (a training log is not the place for a bar); the CLI asks."""
    from vqrl.data.checks import check_media

    save_image(tmp_path / "a.jpg")
    data = write_json(tmp_path / "d.json", [scoring("a.jpg")])
    records = load_checked_records(DataConfig(files=[data], image_root=str(tmp_path)))
    assert check_media(records, image_root=str(tmp_path)) == {}
    assert capsys.readouterr().err == ""
    check_media(records, image_root=str(tmp_path), progress=True)
    load_checked_records(DataConfig(files=[data], image_root=str(tmp_path)), progress=True)
    err = capsys.readouterr().err
    assert "checking media" in err and "decoding media" in err


def test_a_record_that_fails_to_decode_in_training_is_logged_with_its_file_index_and_count(mixed_file, tmp_path,
                                                                                            caplog):
    records = load_checked_records(DataConfig(files=[mixed_file], image_root=str(tmp_path), video_root=str(tmp_path),
                                              on_bad_sample="skip"))
    (tmp_path / "b.jpg").write_bytes(b"garbage" * 100)  # record 1
    builder = _builder(records)
    with caplog.at_level("WARNING", logger="vqrl.data.dataset"):
        builder.row(1)
    (message,) = [r.getMessage() for r in caplog.records if "cannot decode media" in r.getMessage()]
    assert message.startswith(f"{records[1]['_file']}:{records[1]['_index']}: cannot decode media (")
    assert message.endswith("); using another record instead (1 failed so far)")


def test_a_broken_record_is_located_by_line_even_after_leading_blank_lines(tmp_path):
    last_line = '{"image": "b.jpg", "solution": 4.1'
    (tmp_path / "d.json").write_text("\n\n[\n" + json.dumps(scoring("a.jpg")) + ",\n" + last_line)
    (problem,) = read_records(tmp_path / "d.json").problems
    assert f"line 5 column {len(last_line) + 1}" in problem.reason, problem.reason
    (tmp_path / "e.json").write_text("\n[" + last_line)  # one blank line, then the broken record on line 2
    (problem,) = read_records(tmp_path / "e.json").problems
    assert f"line 2 column {len(last_line) + 2}" in problem.reason, problem.reason


def test_a_processor_without_merge_size_merges_two_by_two_as_qwen():
    """VisionSpec.for_processor: a processor that does not state merge_size gets Qwen's 2x2 merge (factor = patch x 2)."""
    from types import SimpleNamespace

    processor = SimpleNamespace(image_processor=SimpleNamespace(patch_size=14, size={}),
                                video_processor=SimpleNamespace(patch_size=14, size={}))
    assert VisionSpec.for_processor(processor).factor == 28
