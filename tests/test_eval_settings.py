"""`vqrl eval`'s settings: the command line's defaults, what a resume must match (settings.json), and each setting
refused before anything is read or loaded, with its exact message."""

from __future__ import annotations

import argparse
import os

import pytest

from vqrl.eval import run as eval_run
from vqrl.eval.predictions import EvalError
from vqrl.eval.settings import check_args, eval_settings, model_fingerprint, prompt_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    eval_run.add_arguments(parser)
    return parser.parse_args(["--model", "m", "--data", "d.json", "--out", "o", *argv])


@pytest.fixture
def model_dir(tmp_path):
    """A folder that looks like a saved model to check_args (config.json and safetensors weights)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"12345")
    return str(folder)


def test_the_command_lines_defaults():
    args = parse()
    assert (args.mode, args.num_samples, args.temperature, args.backend, args.batch_size, args.max_new_tokens,
            args.dtype, args.device, args.seed, args.progress, args.overwrite) == (
        "greedy", 8, 1.0, "hf", 8, 256, "auto", None, 0, False, False)
    unset = ("think", "system_prompt", "use_record_question", "min_pixels", "max_pixels", "max_model_len",
             "video_fps", "video_max_frames", "video_max_pixels", "video_total_pixels", "image_root", "video_root")
    assert {k: getattr(args, k) for k in unset} == dict.fromkeys(unset)  # unset: the model's own, else the default
    assert (parse("--think").think, parse("--no_think").think) == (True, False)
    for missing in ("--model", "--data", "--out"):
        argv = ["--model", "m", "--data", "d.json", "--out", "o"]
        i = argv.index(missing)
        parser = argparse.ArgumentParser()
        eval_run.add_arguments(parser)
        with pytest.raises(SystemExit):
            parser.parse_args(argv[:i] + argv[i + 2:])


def test_the_settings_a_resume_must_match_are_those_that_change_a_prediction(model_dir):
    args = parse("--mode", "greedy", "--no_think", "--batch_size", "2", "--device", "cpu")
    args.model, args.video_fps, args.video_max_frames = model_dir, 2.0, 16
    fingerprint = model_fingerprint(model_dir)
    assert fingerprint["model"] == os.path.abspath(model_dir)
    assert sorted(fingerprint["model_files"]) == ["config.json", "model.safetensors"]
    assert fingerprint["model_files"]["model.safetensors"][0] == 5
    base = {**fingerprint, "mode": "greedy", "think": False, "backend": "hf", "max_new_tokens": 256,
            "video_fps": 2.0, "video_max_frames": 16, "dtype": "auto", "seed": 0}
    assert eval_settings(args) == base  # batch size, device and progress change no prediction
    args.mode, args.num_samples, args.temperature = "sample", 4, 0.7
    assert eval_settings(args) == {**base, "mode": "sample", "num_samples": 4, "temperature": 0.7}
    args.mode, args.backend, args.max_model_len = "greedy", "vllm", 4096
    assert eval_settings(args) == {**base, "backend": "vllm", "max_model_len": 4096}
    args.backend, args.max_pixels, args.system_prompt = "hf", 50176, "You rate images."
    assert eval_settings(args) == {**base, "max_pixels": 50176, "system_prompt": "You rate images."}
    assert model_fingerprint("Qwen/Qwen2.5-VL-3B-Instruct") == {"model": "Qwen/Qwen2.5-VL-3B-Instruct"}


def test_the_prompt_config_follows_the_settings():
    args = argparse.Namespace(think=False, system_prompt="", use_record_question=False)
    cfg = prompt_config(args)
    assert (cfg.think, cfg.system_prompt, cfg.use_record_question) == (False, None, False)  # '' means no system turn
    args = argparse.Namespace(think=True, system_prompt="Rate it.", use_record_question=True)
    cfg = prompt_config(args)
    assert (cfg.think, cfg.system_prompt, cfg.use_record_question) == (True, "Rate it.", True)


def checked(model_dir, *argv):
    args = parse(*argv)
    args.model = model_dir
    for key, value in (("video_fps", 2.0), ("video_max_frames", 16), ("think", True)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_args(args)


@pytest.mark.parametrize("argv, message", [
    (["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be at least 1, got 0"),
    (["--num_samples", "-1"], "--num_samples must be at least 1, got -1"),
    (["--min_pixels", "0"], "--min_pixels must be a positive number of pixels, got 0"),
    (["--max_pixels", "-5"], "--max_pixels must be a positive number of pixels, got -5"),
    (["--video_max_pixels", "0"], "--video_max_pixels must be a positive number of pixels, got 0"),
    (["--video_total_pixels", "0"], "--video_total_pixels must be a positive number of pixels, got 0"),
    (["--video_fps", "0"], "--video_fps must be positive, got 0.0"),
    (["--video_max_frames", "1"], "--video_max_frames must be at least 2, got 1: Qwen-VL encodes video frames in pairs "
                                  "(temporal patch 2), so a video is at least 2 frames (odd counts round down)"),
    (["--min_pixels", "3136", "--max_pixels", "3135"], "--max_pixels 3135 is below --min_pixels 3136"),
    (["--backend", "vllm", "--mode", "expected", "--think"],
     "--backend vllm --mode expected supports --no_think only; use the hf backend"),
])
def test_each_bad_setting_is_refused_with_its_message(model_dir, argv, message):
    with pytest.raises(EvalError) as refused:
        checked(model_dir, *argv)
    assert str(refused.value) == message


@pytest.mark.parametrize("argv", [
    ["--batch_size", "1", "--max_new_tokens", "1", "--num_samples", "1"],
    ["--min_pixels", "3136", "--max_pixels", "3136", "--video_max_pixels", "1", "--video_total_pixels", "1"],
    ["--video_max_frames", "2", "--video_fps", "0.5"],
    ["--backend", "vllm", "--mode", "expected", "--no_think"],
    ["--backend", "vllm", "--mode", "greedy", "--think"],
])
def test_the_smallest_good_settings_pass(model_dir, argv):
    checked(model_dir, *argv)


def test_a_local_model_folder_must_hold_a_config_and_safetensors_weights(model_dir, tmp_path):
    os.remove(os.path.join(model_dir, "model.safetensors"))
    with pytest.raises(EvalError, match=r"^--model .*model: no \*\.safetensors weights in the folder$"):
        checked(model_dir)
    (tmp_path / "model" / "model.bin").write_bytes(b"x")
    with pytest.raises(EvalError, match=r"no \*\.safetensors weights"):
        checked(model_dir)
    (tmp_path / "model" / "model-00001-of-00002.safetensors").write_bytes(b"x")
    checked(model_dir)
    os.remove(os.path.join(model_dir, "config.json"))
    with pytest.raises(EvalError, match=r"^--model .*model: no config.json in the folder \(not a saved model\?\)$"):
        checked(model_dir)
    with pytest.raises(EvalError, match=r"^--model .*nowhere: no such folder$"):
        checked(str(tmp_path / "nowhere"))
