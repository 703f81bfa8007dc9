"""vqrl_settings.json as a file, without a model: exactly what training records, written whole (synced, then renamed
over the old one), and read back as the known settings only, or a one-line error naming the file."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from vqrl.training import saved_settings as S


def _config(**overrides):
    values = {**S.DEFAULTS, "think": False, "max_pixels": 12544, "trainer": "refine",
              "reward_funcs": ("format", "accuracy"), "learning_rate": 1e-6}
    values.update(overrides)
    return SimpleNamespace(**values)


def test_a_config_records_its_settings_trainer_and_rewards():
    assert S.of_config(_config()) == {"vqrl_settings_version": 1, **S.DEFAULTS, "think": False, "max_pixels": 12544,
                                      "trainer": "refine", "reward_funcs": ["format", "accuracy"]}


def test_the_file_is_written_whole_then_renamed_into_place(tmp_path, durability_log):
    events = durability_log(S)
    (tmp_path / S.FILENAME).write_text("{\"think\": true}")  # an older one: replaced
    settings = S.of_config(_config())
    path = S.write(str(tmp_path), settings)
    text = (tmp_path / S.FILENAME).read_text()
    assert path == str(tmp_path / S.FILENAME)
    assert text == json.dumps(settings, indent=2, sort_keys=True) + "\n"
    assert events == [len(text.encode()), ("replace", S.FILENAME)]  # synced whole before the rename
    assert os.listdir(tmp_path) == [S.FILENAME]


def test_reading_keeps_the_known_settings_only(tmp_path):
    assert S.read(str(tmp_path)) is None
    S.write(str(tmp_path), {**S.of_config(_config()), "unknown": 1})
    assert S.read(str(tmp_path)) == {**S.DEFAULTS, "think": False, "max_pixels": 12544}
    S.write(str(tmp_path), {"video_fps": 1.0})
    assert S.read(str(tmp_path)) == {"video_fps": 1.0}


@pytest.mark.parametrize("text, message", [("[1, 2]", "not a JSON object"), ("{cut", "unreadable")])
def test_a_bad_file_is_one_error_naming_it(tmp_path, text, message):
    (tmp_path / S.FILENAME).write_text(text)
    with pytest.raises(ValueError) as raised:
        S.read(str(tmp_path))
    assert str(raised.value).startswith(f"{tmp_path / S.FILENAME}: {message}")
    assert raised.value.__cause__ is None
    if message == "unreadable":  # one line: the parser's traceback is not chained onto it
        assert raised.value.__suppress_context__
        assert str(raised.value).endswith("; delete it to evaluate with flags and defaults only")
    (tmp_path / S.FILENAME).unlink()
    (tmp_path / S.FILENAME).mkdir()  # a folder by that name is no settings file
    assert S.read(str(tmp_path)) is None
