"""What `build_trainer` (the training entry) does with the data before step 1: the same checks as validate-data,
media decoded, under --on_bad_sample error and skip (issue 20: a truncated JPEG used to start training)."""

from __future__ import annotations

import os
import shutil

import pytest

from trainer_utils import EXAMPLES, make_trainer, write_records
from vqrl.data.records import DataError


@pytest.fixture
def data_with_broken_images(tmp_path):
    shutil.copy(os.path.join(EXAMPLES, "images", "camera.jpg"), tmp_path / "a.jpg")
    shutil.copy(os.path.join(EXAMPLES, "images", "coffee.jpg"), tmp_path / "b.jpg")
    raw = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.jpg").write_text("not an image\n")
    records = [{"image": str(tmp_path / name), "solution": 3.0 + i * 0.2, "type": "scoring_image"}
               for i, name in enumerate(["a.jpg", "cut.jpg", "b.jpg", "text.jpg", "a.jpg", "b.jpg"])]
    return write_records(tmp_path / "d.json", records)


def test_training_refuses_to_start_on_files_that_do_not_decode(tiny_model_dir, tmp_path, data_with_broken_images):
    with pytest.raises(DataError) as info:
        make_trainer(tiny_model_dir, tmp_path / "out", [data_with_broken_images])
    lines = str(info.value).splitlines()
    assert lines[0].startswith("2 bad record(s)")
    assert lines[1].startswith(f"{data_with_broken_images}:1: unreadable image") and "truncated" in lines[1]
    assert lines[2].startswith(f"{data_with_broken_images}:3: unreadable image") and "cannot identify" in lines[2]


def test_training_with_skip_trains_only_on_records_that_decode(tiny_model_dir, tmp_path, data_with_broken_images):
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [data_with_broken_images], on_bad_sample="skip")
    assert [r["_index"] for r in trainer.row_builder.records] == [0, 2, 4, 5]
    assert len(trainer.train_dataset) == 4


def test_training_refuses_prompts_over_max_prompt_length(tiny_model_dir, tmp_path):
    data = write_records(tmp_path / "d.json",
                         [{"image": "images/coffee.jpg", "solution": 3.0, "type": "scoring_image"}])
    with pytest.raises(DataError, match=r"d.json:0: prompt is ~\d+ tokens with its image/video tokens, over "
                                        r"max_prompt_length 50"):
        make_trainer(tiny_model_dir, tmp_path / "out", [data], max_prompt_length=50)
