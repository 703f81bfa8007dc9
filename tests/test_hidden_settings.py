"""Settings that used to hide: vision-once is a config flag (the environment variable only a deprecated override),
and TRL's standard --resume_from_checkpoint resumes (it was silently ignored in favour of --resume)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from trainer_utils import flags, make_trainer, write_records

from vqrl import grpo
from vqrl.config import parse
from vqrl.config_checks import ConfigError, check_config
from vqrl.training import checkpoints

IMAGES = [{"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
          {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.4, "type": "scoring_image"}]


@pytest.fixture
def data(tmp_path):
    return write_records(tmp_path / "d.json", IMAGES)


# ---------------------------------------------------------------- vision-once


def test_vision_once_is_a_flag(tiny_model_dir, tmp_path, data, monkeypatch, caplog):
    monkeypatch.delenv("VQRL_VISION_ONCE", raising=False)
    caplog.set_level(logging.INFO)
    assert make_trainer(tiny_model_dir, tmp_path / "a", [data]).vision_once is True  # auto, no ZeRO-3
    off = make_trainer(tiny_model_dir, tmp_path / "b", [data], vision_once="false")
    assert off.vision_once is False and off.args.vision_once == "false"
    assert "vision-once off (--vision_once false)" in caplog.text


def test_the_environment_variable_is_a_deprecated_override(tiny_model_dir, tmp_path, data, monkeypatch, caplog):
    monkeypatch.setenv("VQRL_VISION_ONCE", "0")
    trainer = make_trainer(tiny_model_dir, tmp_path / "a", [data])
    assert trainer.vision_once is False
    assert trainer.args.vision_once == "false"  # what ran is what the saved arguments say
    assert "VQRL_VISION_ONCE is deprecated and will be removed: use --vision_once false" in caplog.text


@pytest.mark.parametrize("flag, env, message", [
    ("maybe", None, "--vision_once maybe: must be auto, true or false"),
    ("auto", "yes", "VQRL_VISION_ONCE=yes: must be 1 or 0"),
    ("true", "0", "--vision_once true and VQRL_VISION_ONCE=0 disagree"),
])
def test_bad_vision_once_settings_stop_before_any_model_loads(tmp_path, data, monkeypatch, flag, env, message):
    if env is None:
        monkeypatch.delenv("VQRL_VISION_ONCE", raising=False)
    else:
        monkeypatch.setenv("VQRL_VISION_ONCE", env)
    args, model_args = parse(flags("", tmp_path / "o", [data], vision_once=flag))
    with pytest.raises(ConfigError, match=message):
        check_config(args, model_args)


# ---------------------------------------------------------------- resume_from_checkpoint


def _complete_checkpoint(run_dir, step: int) -> str:
    path = os.path.join(run_dir, f"checkpoint-{step}")
    os.makedirs(path)
    for name in ("model.safetensors", "config.json"):
        with open(os.path.join(path, name), "w") as f:
            f.write("x")
    with open(os.path.join(path, checkpoints.MARKER), "w") as f:
        json.dump({"step": step}, f)
    return path


def test_trls_resume_flag_resumes(tmp_path, data, monkeypatch, caplog):
    """--resume_from_checkpoint PATH is read as --resume PATH: here PATH is the run's last step, so nothing trains and
    final/ comes from it. Before, the flag was ignored and the run trained again from the start."""
    caplog.set_level(logging.INFO)
    ckpt = _complete_checkpoint(tmp_path / "ckpts", 2)
    monkeypatch.setattr(grpo, "build_trainer", lambda *a, **k: pytest.fail("trained from the start"))
    code = grpo.main(flags("", tmp_path / "o", [data], resume_from_checkpoint=ckpt))
    assert code == 0
    assert checkpoints.marker_step(str(tmp_path / "o" / "final")) == 2
    assert f"--resume_from_checkpoint {ckpt} is read as vqrl's --resume {ckpt}" in caplog.text


@pytest.mark.parametrize("value, expected", [("true", "auto"), ("True", "auto"), ("false", "none"), ("/x", "/x")])
def test_trls_resume_values_map_onto_resume(tmp_path, value, expected):
    from vqrl.config_checks import resume_setting

    args, _ = parse(flags("", tmp_path, ["d.json"], resume_from_checkpoint=value))
    assert resume_setting(args) == expected


def test_two_resume_flags_that_disagree_are_refused(tmp_path, data, capsys):
    code = grpo.main(flags("", tmp_path / "o", [data], resume_from_checkpoint="/a", resume="auto"))
    assert code == 2
    assert "--resume_from_checkpoint /a and --resume auto disagree" in capsys.readouterr().err


def test_a_missing_checkpoint_names_the_flag_given(tmp_path, data, capsys):
    code = grpo.main(flags("", tmp_path / "o", [data], resume_from_checkpoint=str(tmp_path / "nope")))
    assert code == 2
    assert f"--resume_from_checkpoint {tmp_path / 'nope'}: no such checkpoint folder" in capsys.readouterr().err


# ---------------------------------------------------------------- attention speed-ups


def test_attention_speed_ups_are_flags(tiny_model_dir, tmp_path, data):
    """--batch_vision_windows and --grouped_decode_attention (both on by default) reach the model they name."""
    from vqrl.modeling import grouped_decode, vision_windows

    default = make_trainer(tiny_model_dir, tmp_path / "a", [data])
    assert default.batched_vision_windows is True and default.grouped_decode_attention is True
    config = default.model.config
    assert config.vision_config._attn_implementation == vision_windows.NAME
    assert config.text_config._attn_implementation == grouped_decode.NAME
    other = make_trainer(tiny_model_dir, tmp_path / "b", [data], batch_vision_windows="false",
                         grouped_decode_attention="false")
    assert other.batched_vision_windows is False and other.grouped_decode_attention is False
    config = other.model.config
    assert config.vision_config._attn_implementation == "sdpa"
    assert config.text_config._attn_implementation == "sdpa"
