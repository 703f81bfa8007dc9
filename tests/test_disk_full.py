"""A full disk says "no space left on device" (torch's own text is "unexpected pos ..."), never leaves a checkpoint
that resume could pick, and the run resumes once there is space again."""

from __future__ import annotations

import errno
import json
import os
from collections import namedtuple

import pytest

from trainer_utils import EXAMPLES, flags
from vqrl.training import checkpoints

TORCH_ENOSPC = "[enforce fail at inline_container.cc:664] . unexpected pos 1152 vs 1046"
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _argv(model_dir, out, **overrides):
    data = out.parent / "images.json"
    records = [r for r in json.load(open(os.path.join(EXAMPLES, "RL_examples.json"))) if "image" in r]
    data.write_text(json.dumps(records))
    values = dict(reward_funcs=["format"], max_steps=2, max_pixels=3136, save_strategy="steps", save_steps=1,
                  disable_tqdm="true")
    values.update(overrides)
    return flags(model_dir, out, [str(data)], **values)


def _fail_saving(monkeypatch, step: int, error: BaseException):
    """torch.save raises `error` on the first file of checkpoint-<step> (the optimizer state, mid-checkpoint)."""
    import torch

    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and f"checkpoint-{step}" in os.fspath(f):
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("error, nearly_full", [
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (RuntimeError(TORCH_ENOSPC), True),  # what torch raises: the errno is lost, the disk's free space tells
])
def test_disk_full_during_a_checkpoint_says_so_and_leaves_no_partial_checkpoint(tiny_model_dir, tmp_path, monkeypatch,
                                                                               capsys, error, nearly_full):
    from vqrl.grpo import main

    out = tmp_path / "run"
    _fail_saving(monkeypatch, 2, error)
    if nearly_full:
        monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 4096, 4096))
    assert main(_argv(tiny_model_dir, out)) == 1
    err = capsys.readouterr().err
    assert "vqrl: no space left on device under " + str(out) in err, err
    assert "--resume auto" in err and "checkpoint-1" in err  # what to do, and where it will resume
    names = sorted(os.listdir(out))
    assert "checkpoint-2" not in names and not [n for n in names if n.startswith((".staging", ".trash"))], names
    assert checkpoints.latest_complete(str(out)).endswith("checkpoint-1")

    monkeypatch.undo()  # space again: the run resumes from checkpoint-1 and finishes
    assert main(_argv(tiny_model_dir, out, resume="auto")) == 0
    assert checkpoints.marker_step(str(out / "final")) == 2


def test_a_torch_write_failure_with_space_left_is_not_called_a_full_disk(tiny_model_dir, tmp_path, monkeypatch):
    from vqrl.grpo import main

    _fail_saving(monkeypatch, 1, RuntimeError(TORCH_ENOSPC))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        main(_argv(tiny_model_dir, tmp_path / "run"))


def test_no_space_left_reads_the_whole_exception_chain(tmp_path, monkeypatch):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as exc:
        chained = exc
    assert checkpoints.no_space_left(chained, str(tmp_path))
    assert checkpoints.no_space_left(OSError(errno.EDQUOT, "Disk quota exceeded"), str(tmp_path))
    assert checkpoints.no_space_left(RuntimeError("safetensors: Os { code: 28, kind: StorageFull }"), str(tmp_path))
    assert not checkpoints.no_space_left(OSError(errno.EACCES, "Permission denied"), str(tmp_path))
    assert not checkpoints.no_space_left(RuntimeError(TORCH_ENOSPC), str(tmp_path))  # plenty of space here
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 0))
    assert checkpoints.no_space_left(RuntimeError(TORCH_ENOSPC), str(tmp_path / "not" / "made" / "yet"))
