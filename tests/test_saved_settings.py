"""Training saves its prompt and vision settings with every checkpoint and final/ (vqrl_settings.json); `vqrl eval`
scores the model under them unless a flag says otherwise, and says which value came from where."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil

import pytest
from trainer_utils import EXAMPLES, make_trainer, write_records

from vqrl.eval import run as eval_run
from vqrl.eval.predictions import EvalError
from vqrl.eval.settings import apply_model_settings
from vqrl.training import checkpoints, saved_settings

IMAGES = [{"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
          {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.4, "type": "scoring_image"}]


def _eval_args(model, out, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    eval_run.add_arguments(parser)
    return parser.parse_args(["--model", str(model), "--data", os.path.join(EXAMPLES, "RL_examples_eval.json"),
                              "--image_root", EXAMPLES, "--video_root", EXAMPLES, "--out", str(out), *extra])


def test_defaults_are_the_training_defaults():
    from vqrl.config import VQRLConfig

    fields = {f.name: f.default for f in dataclasses.fields(VQRLConfig)}
    assert saved_settings.DEFAULTS == {key: fields[key] for key in saved_settings.SETTINGS}


def test_every_checkpoint_and_final_carry_the_settings(tiny_model_dir, tmp_path):
    from vqrl.grpo import save_final

    data = write_records(tmp_path / "d.json", IMAGES)
    out = tmp_path / "run"
    trainer = make_trainer(tiny_model_dir, out, [data], think="false", reward_funcs=["answer"], system_prompt="Judge.",
                           video_fps=1.0, video_max_frames=8, max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    final = save_final(trainer, str(out))
    for folder in (str(out / "checkpoint-1"), final):
        assert checkpoints.is_complete(folder)
        saved = saved_settings.read(folder)
        assert saved["think"] is False and saved["system_prompt"] == "Judge."
        assert (saved["video_fps"], saved["video_max_frames"]) == (1.0, 8)
    with open(os.path.join(final, saved_settings.FILENAME)) as f:
        assert json.load(f)["trainer"] == "standard"


def _model_with(tiny_model_dir, tmp_path, settings) -> str:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    saved_settings.write(str(model), settings)
    return str(model)


def test_eval_takes_the_models_settings_unless_a_flag_says_otherwise(tiny_model_dir, tmp_path):
    model = _model_with(tiny_model_dir, tmp_path, {"think": False, "system_prompt": "Judge.", "video_fps": 1.0,
                                                    "max_pixels": 50176, "trainer": "refine"})
    args = _eval_args(model, tmp_path / "e", "--video_fps", "3")
    line = apply_model_settings(args)
    assert (args.think, args.system_prompt, args.max_pixels, args.video_fps) == (False, "Judge.", 50176, 3.0)
    assert (args.video_max_frames, args.use_record_question) == (16, True)  # neither saved nor given: the defaults
    assert f"from {os.path.join(model, 'vqrl_settings.json')}: think=False, system_prompt='Judge.'" in line
    assert "from flags: video_fps=3.0" in line and "defaults: use_record_question=True" in line
    args = _eval_args(model, tmp_path / "e", "--think", "--system_prompt", "")
    apply_model_settings(args)
    assert args.think is True and args.system_prompt == ""  # '' = no system turn, on purpose


def test_a_model_without_settings_gets_the_defaults(tiny_model_dir, tmp_path):
    args = _eval_args(tiny_model_dir, tmp_path / "e")
    assert apply_model_settings(args).startswith("prompt and vision settings no vqrl_settings.json with the model")
    assert (args.think, args.video_fps, args.video_max_frames) == (True, 2.0, 16)


def test_eval_prompts_as_the_model_was_trained(tiny_model_dir, tmp_path, monkeypatch):
    """A no-think model with a system prompt is evaluated with no-think prompts and that system turn (before, eval
    prompted in think mode without it unless told, and nothing said so)."""
    model = _model_with(tiny_model_dir, tmp_path, {"think": False, "system_prompt": "Judge."})
    seen = []
    real = eval_run.build_messages

    def spy(record, media, cfg, think=None):
        seen.append((cfg.think, cfg.system_prompt))
        return real(record, media, cfg, think)

    monkeypatch.setattr(eval_run, "build_messages", spy)
    eval_run.evaluate(_eval_args(model, tmp_path / "e", "--max_new_tokens", "2", "--batch_size", "4"))
    assert seen and set(seen) == {(False, "Judge.")}
    with open(tmp_path / "e" / "settings.json") as f:
        recorded = json.load(f)
    assert recorded["think"] is False and recorded["system_prompt"] == "Judge."


def test_an_unreadable_settings_file_is_one_line(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / saved_settings.FILENAME).write_text("{cut")
    with pytest.raises(EvalError, match=r"vqrl_settings.json: unreadable .*delete it to evaluate with flags"):
        apply_model_settings(_eval_args(model, tmp_path / "e"))


@pytest.mark.parametrize("flag, message", [("--max_pixels", "--max_pixels must be a positive number of pixels"),
                                           ("--video_total_pixels", "--video_total_pixels must be a positive")])
def test_bad_budget_flags_are_refused_before_anything_loads(tiny_model_dir, tmp_path, flag, message):
    args = _eval_args(tiny_model_dir, tmp_path / "e", flag, "0")
    apply_model_settings(args)
    with pytest.raises(EvalError, match=message):
        eval_run.check_args(args)
