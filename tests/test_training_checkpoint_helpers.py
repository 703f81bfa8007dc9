"""training/checkpoints.py's smaller promises, each with exact expectations: every file of a nested checkpoint is
synced and no descriptor leaks, final/ takes files only, the free-space probe finds the disk of a folder not made
yet, a full disk is told apart through the whole exception chain and near the exact threshold, and optimizer state
is recognised in every form a trainer writes it."""

from __future__ import annotations

import errno
import json
import os
from collections import namedtuple

import pytest

from vqrl.training import checkpoints as C

Usage = namedtuple("Usage", "total used free")
TORCH_WRITE_FAILURE = "[enforce fail at inline_container.cc:664] . unexpected pos 1152 vs 1046"


def _staged(run_dir, step):
    folder = run_dir / f"{C.STAGING_PREFIX}{step}" / f"checkpoint-{step}"
    (folder / f"global_step{step}").mkdir(parents=True)
    (folder / "model.safetensors").write_text("weights")
    (folder / f"global_step{step}" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_text("shard 0")
    (folder / f"global_step{step}" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_text("shard 1!")
    return folder


def test_every_file_of_a_nested_checkpoint_is_synced_and_no_descriptor_leaks(tmp_path, monkeypatch):
    """DeepSpeed's shards sit in a global_step folder: they are synced too, each file once, and every descriptor
    opened for it is closed again (a run saving every few minutes for a week must not run out of them)."""
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(C.os, "fsync", fsync)
    fds_before = set(os.listdir("/proc/self/fd"))
    path = C.finalize(str(_staged(tmp_path, 3)), str(tmp_path), 3)
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    staged = str(tmp_path / f"{C.STAGING_PREFIX}3" / "checkpoint-3")
    assert sorted(synced) == sorted([os.path.join(staged, C.MARKER)] * 2 + [  # the marker, then the tree
        os.path.join(staged, "model.safetensors"),
        os.path.join(staged, "global_step3", "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
        os.path.join(staged, "global_step3", "zero_pp_rank_1_mp_rank_00_optim_states.pt")])
    assert json.loads((tmp_path / "checkpoint-3" / C.MARKER).read_text())["step"] == 3
    assert C.has_optimizer_state(path)


def test_final_takes_the_files_of_a_checkpoint_not_its_folders(tmp_path):
    """A ZeRO-3 checkpoint with 16-bit weights also holds its optimizer shards in global_step<N>/: final/ gets the
    weights (the adapter alone for a LoRA run, the index of sharded weights), never the shard folder."""
    for weights in ("model.safetensors.index.json", "adapter_model.safetensors"):
        run = tmp_path / weights
        staged = _staged(run, 5)
        (staged / "model.safetensors").unlink()
        (staged / weights).write_text("{}")
        ckpt = C.finalize(str(staged), str(run), 5)
        final = C.export_final(ckpt, str(run))
        assert sorted(os.listdir(final)) == sorted([C.MARKER, weights]) and C.marker_step(final) == 5
        assert sorted(os.listdir(run)) == ["checkpoint-5", "final"]


def test_a_stale_staging_of_final_is_replaced_not_mixed_in(tmp_path):
    ckpt = C.finalize(str(_staged(tmp_path, 2)), str(tmp_path), 2)
    (tmp_path / C.FINAL_STAGING).mkdir()
    (tmp_path / C.FINAL_STAGING / "model-00001-of-00002.safetensors").write_text("from a crashed export")
    final = C.export_final(ckpt, str(tmp_path))
    assert sorted(os.listdir(final)) == sorted([C.MARKER, "model.safetensors"])


def test_optimizer_state_in_each_form_a_trainer_writes_it(tmp_path):
    for name, is_dir, expected in [("optimizer.pt", False, True), ("optimizer.bin", False, True),
                                   ("global_step7", True, True), ("global_step7", False, False),
                                   ("optimizer", True, False), ("scheduler.pt", False, False)]:
        folder = tmp_path / f"{name}-{is_dir}"
        folder.mkdir()
        (folder / "model.safetensors").write_text("w")
        if is_dir:
            (folder / name).mkdir()
        else:
            (folder / name).write_text("x")
        assert C.has_optimizer_state(str(folder)) is expected, (name, is_dir)


def test_free_space_is_that_of_the_nearest_folder_that_exists(tmp_path, monkeypatch):
    asked = []

    def usage(path):
        asked.append(path)
        return Usage(100, 60, 40)

    monkeypatch.setattr(C.shutil, "disk_usage", usage)
    assert C.free_bytes(str(tmp_path / "run" / "checkpoint-3")) == 40
    assert asked == [str(tmp_path)]
    monkeypatch.chdir(tmp_path)
    assert C.free_bytes("new_run") == 40 and asked[-1] == str(tmp_path)  # relative: from the working folder

    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(C.shutil, "disk_usage", unreadable)
    assert C.free_bytes(str(tmp_path)) is None


@pytest.mark.parametrize("free, full", [(C.NEARLY_FULL_BYTES - 1, True), (C.NEARLY_FULL_BYTES, False), (None, False)])
def test_a_torch_write_failure_means_a_full_disk_only_below_64_mib_free(tmp_path, monkeypatch, free, full):
    assert C.NEARLY_FULL_BYTES == 64 * 2**20
    if free is None:
        monkeypatch.setattr(C.shutil, "disk_usage", lambda path: (_ for _ in ()).throw(OSError(5, "I/O error")))
    else:
        monkeypatch.setattr(C.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))
    for text in (TORCH_WRITE_FAILURE, "PytorchStreamWriter failed writing file data/3", "File write failed"):
        assert C.no_space_left(RuntimeError(text), str(tmp_path)) is full, text


def test_a_full_disk_is_found_anywhere_in_the_exception_chain(tmp_path, monkeypatch):
    """Deep in a chain, through __context__ (an error raised while handling another) as well as __cause__, in an
    error's text or its errno; a chain that loops back on itself ends; other errors are not a full disk."""
    monkeypatch.setattr(C.shutil, "disk_usage", lambda path: Usage(10**12, 10**11, 9 * 10**11))

    def chain(*errors):
        for outer, inner in zip(errors, errors[1:]):
            outer.__context__ = inner
        return errors[0]

    assert C.no_space_left(chain(RuntimeError("a"), ValueError("b"), OSError(errno.ENOSPC, "x")), str(tmp_path))
    assert C.no_space_left(chain(RuntimeError("a"), OSError("Disk quota exceeded")), str(tmp_path))
    assert C.no_space_left(chain(RuntimeError("a"), IOError("write: No space left on device")), str(tmp_path))
    assert C.no_space_left(RuntimeError("failed: os error 28"), str(tmp_path))
    assert not C.no_space_left(chain(RuntimeError("a"), OSError(errno.EIO, "Input/output error")), str(tmp_path))
    looped = RuntimeError("outer")
    looped.__context__ = ValueError("inner")
    looped.__context__.__context__ = looped
    assert C.no_space_left(looped, str(tmp_path)) is False
    last = OSError(errno.EDQUOT, "quota")
    looped.__context__.__context__ = last
    assert C.no_space_left(looped, str(tmp_path)) is True
