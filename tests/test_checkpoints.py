"""Unit tests of training/checkpoints.py: staging, completion markers, every way to choose what to resume from, and
what a fault at each point of a save leaves behind (never a checkpoint that resume could pick half-written)."""

from __future__ import annotations

import errno
import json
import os
from collections import namedtuple

import pytest

from vqrl.training import checkpoints as C


def _staged(run_dir, step, files=("model.safetensors", "optimizer.pt")):
    """What the trainer writes before finalize: <run>/.staging-checkpoint-<step>/checkpoint-<step>/..."""
    folder = run_dir / f"{C.STAGING_PREFIX}{step}" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text(f"{name} of step {step}")
    return folder


def _complete(run_dir, step, **kw):
    return C.finalize(str(_staged(run_dir, step, **kw)), str(run_dir), step)


def test_finalize_marks_and_renames_and_removes_the_staging_root(tmp_path):
    path = _complete(tmp_path, 4)
    assert path == str(tmp_path / "checkpoint-4")
    assert C.is_complete(path) and C.marker_step(path) == 4
    assert (tmp_path / "checkpoint-4" / "model.safetensors").read_text() == "model.safetensors of step 4"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


def test_a_checkpoint_without_its_marker_is_never_chosen(tmp_path):
    _complete(tmp_path, 5)
    (tmp_path / "checkpoint-9").mkdir()  # a newer one, cut before its marker
    (tmp_path / "checkpoint-9" / "model.safetensors").write_text("half")
    staged = _staged(tmp_path, 12)  # even a staged folder that already has its marker is not a checkpoint yet
    (staged / C.MARKER).write_text(json.dumps({"step": 12}))
    (tmp_path / "checkpoint-x").mkdir()
    assert [s for s, _ in C.complete_checkpoints(str(tmp_path))] == [5]
    assert C.latest_complete(str(tmp_path)) == str(tmp_path / "checkpoint-5")
    assert C.resolve_resume("auto", str(tmp_path)) == str(tmp_path / "checkpoint-5")


def test_newest_is_chosen_by_step_not_by_name_or_time(tmp_path):
    for step in (10, 9, 100):
        _complete(tmp_path, step)
    os.utime(tmp_path / "checkpoint-9", (1e10, 1e10))  # touched last: irrelevant
    assert C.latest_complete(str(tmp_path)) == str(tmp_path / "checkpoint-100")


@pytest.mark.parametrize("word", [None, "", "none", "false", "False"])
def test_resume_none_starts_afresh_even_with_checkpoints(tmp_path, word):
    _complete(tmp_path, 3)
    assert C.resolve_resume(word, str(tmp_path)) is None


@pytest.mark.parametrize("word", ["auto", "true", "True"])
def test_resume_auto(tmp_path, word):
    assert C.resolve_resume(word, str(tmp_path / "fresh")) is None  # a fresh run: nothing to resume
    assert C.complete_checkpoints(str(tmp_path / "fresh")) == [] and C.clean_partial(str(tmp_path / "fresh")) == []
    _complete(tmp_path, 3)
    assert C.resolve_resume(word, str(tmp_path)) == str(tmp_path / "checkpoint-3")


def test_resume_path(tmp_path):
    path = _complete(tmp_path / "other_run", 7)
    assert C.resolve_resume(path, str(tmp_path / "this_run")) == path  # any complete checkpoint, anywhere
    (tmp_path / "partial").mkdir()
    with pytest.raises(ValueError, match=f"has no {C.MARKER}; it may be half-written"):
        C.resolve_resume(str(tmp_path / "partial"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        C.resolve_resume(str(tmp_path / "missing"), str(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        C.resolve_resume(str(tmp_path / "file"), str(tmp_path))


def test_every_file_is_on_disk_before_the_rename_makes_the_checkpoint_visible(tmp_path, durability_log):
    """fsync sees each file whole (the marker's JSON flushed out of Python's buffer first), and all before the
    rename: a power cut after it cannot expose an empty marker or zero-filled weights."""
    synced = durability_log(C)
    _complete(tmp_path, 4)
    marker_size = len((tmp_path / "checkpoint-4" / C.MARKER).read_bytes())
    assert synced[0] == marker_size > 0  # the marker, written out before its fsync
    assert synced[-1] == ("replace", "checkpoint-4") and len(synced) == 1 + 3 + 1  # the tree: marker + 2 files
    assert all(isinstance(size, int) and size > 0 for size in synced[:-1])


def test_marker_step_is_none_for_a_missing_or_garbled_marker(tmp_path):
    assert C.marker_step(str(tmp_path)) is None
    for text in ("", "{", "[]", '{"step": "3"}', '{"step": true}'):
        (tmp_path / C.MARKER).write_text(text)
        assert C.marker_step(str(tmp_path)) is None, text


# ------------------------------------------------------------------------------------------------ faults in a save


class Crash(Exception):
    pass


def test_a_crash_before_the_marker_leaves_only_staging_which_is_cleaned(tmp_path, monkeypatch):
    _complete(tmp_path, 2)
    staged = _staged(tmp_path, 4)
    monkeypatch.setattr(C, "_fsync_tree", lambda path: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        C.finalize(str(staged), str(tmp_path), 4)
    assert not (tmp_path / "checkpoint-4").exists()
    assert C.latest_complete(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert C.clean_partial(str(tmp_path)) == [str(tmp_path / f"{C.STAGING_PREFIX}4")]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]


def test_a_crash_between_setting_aside_and_renaming_never_exposes_half(tmp_path, monkeypatch):
    """Replacing a stale checkpoint-4 (from a run that died in its rename): the old copy goes to trash first;
    a crash right then leaves no checkpoint-4 at all, never a mixture."""
    _complete(tmp_path, 2)
    stale = tmp_path / "checkpoint-4"
    stale.mkdir()
    (stale / "model.safetensors").write_text("stale")
    staged = _staged(tmp_path, 4)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise Crash()
        return real(src, dst)

    monkeypatch.setattr(C.os, "replace", replace)
    with pytest.raises(Crash):
        C.finalize(str(staged), str(tmp_path), 4)
    monkeypatch.undo()
    assert not stale.exists()
    assert C.latest_complete(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    C.clean_partial(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]


def test_finalize_replaces_a_stale_copy_of_the_same_step(tmp_path):
    stale = tmp_path / "checkpoint-4"
    stale.mkdir()
    (stale / "model.safetensors").write_text("stale")
    (stale / "leftover.bin").write_text("from the dead attempt")
    _complete(tmp_path, 4)
    assert sorted(os.listdir(stale)) == sorted([C.MARKER, "model.safetensors", "optimizer.pt"])
    assert (stale / "model.safetensors").read_text() == "model.safetensors of step 4"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]


def test_clean_partial_removes_leftovers_only(tmp_path):
    _complete(tmp_path, 1)
    for name in (f"{C.STAGING_PREFIX}3", C.FINAL_STAGING, ".trash-checkpoint-2-99", ".trash-final-7"):
        (tmp_path / name).mkdir()
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / ".staging-notes.txt").write_text("a file, not a leftover folder")
    removed = C.clean_partial(str(tmp_path))
    assert len(removed) == 4
    assert sorted(os.listdir(tmp_path)) == [".staging-notes.txt", "checkpoint-1", "metrics.jsonl"]
    assert C.clean_partial(str(tmp_path / "missing")) == []


# ------------------------------------------------------------------------------------------------ final/


def test_export_final_copies_the_model_not_the_training_state(tmp_path):
    files = ("model.safetensors", "config.json", "tokenizer.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
             "rng_state_3.pth", "trainer_state.json", "scaler.pt", "training_args.bin")
    ckpt = _complete(tmp_path, 6, files=files)
    final = C.export_final(ckpt, str(tmp_path))
    assert final == str(tmp_path / C.FINAL) and C.marker_step(final) == 6
    assert sorted(os.listdir(final)) == sorted([C.MARKER, "config.json", "model.safetensors", "tokenizer.json",
                                                "training_args.bin"])
    assert not (tmp_path / C.FINAL_STAGING).exists()


def test_export_final_refuses_what_it_cannot_export(tmp_path):
    (tmp_path / "partial").mkdir()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        C.export_final(str(tmp_path / "partial"), str(tmp_path))
    ckpt = _complete(tmp_path, 2, files=("optimizer.pt", "global_step2"))  # ZeRO-3 shards without 16-bit weights
    with pytest.raises(ValueError, match="no consolidated weights"):
        C.export_final(ckpt, str(tmp_path))
    assert not (tmp_path / C.FINAL).exists()


def test_publish_replaces_final_in_one_rename(tmp_path):
    old = tmp_path / "final"
    old.mkdir()
    (old / "model.safetensors").write_text("old")
    new = tmp_path / C.FINAL_STAGING
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    C.publish(str(new), str(old), 9)
    assert (old / "model.safetensors").read_text() == "new" and C.marker_step(str(old)) == 9
    assert sorted(os.listdir(tmp_path)) == ["final"]


def test_a_file_that_cannot_be_opened_for_syncing_does_not_stop_the_others(tmp_path, monkeypatch):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    synced, opened, real_open = [], [], os.open

    def open_(path, flags, *args):
        opened.append(path)
        if len(opened) == 1:  # the first file the walk meets cannot be opened
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(C.os, "open", open_)
    monkeypatch.setattr(C.os, "fsync", fsync)
    C._fsync_tree(str(tmp_path))
    assert len(opened) == 2 and synced == [1]  # the other file is still synced


def test_a_staging_root_that_cannot_be_removed_does_not_fail_the_save(tmp_path, monkeypatch):
    """The checkpoint is complete once renamed: a staging root that will not go (an NFS silly-rename file, a busy
    mount) is left for clean_partial, it does not turn a written checkpoint into a failed save."""
    staged = _staged(tmp_path, 6)
    _busy_rmdir(monkeypatch, C.STAGING_PREFIX)
    assert C.finalize(str(staged), str(tmp_path), 6) == str(tmp_path / "checkpoint-6")
    monkeypatch.undo()
    assert C.latest_complete(str(tmp_path)) == str(tmp_path / "checkpoint-6")
    assert C.clean_partial(str(tmp_path)) == [str(tmp_path / f"{C.STAGING_PREFIX}6")]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-6"]


def _busy_rmdir(monkeypatch, prefix):
    """Folders whose name starts with `prefix` cannot be removed (busy: an open file on NFS, a mount)."""
    import shutil

    real_rmdir = os.rmdir

    def rmdir(path, *args, **kwargs):
        if os.path.basename(str(path)).startswith(prefix):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(shutil.os, "rmdir", rmdir)


def test_a_stale_copy_that_cannot_be_removed_does_not_stop_the_new_one(tmp_path, monkeypatch):
    """Replacing a stale checkpoint-4: its set-aside copy may not go at once; the new checkpoint-4 is published all
    the same and the set-aside copy is a leftover clean_partial removes later."""
    stale = tmp_path / "checkpoint-4"
    stale.mkdir()
    (stale / "model.safetensors").write_text("stale")
    staged = _staged(tmp_path, 4)
    _busy_rmdir(monkeypatch, ".trash-")
    assert C.finalize(str(staged), str(tmp_path), 4) == str(stale)
    monkeypatch.undo()
    assert (stale / "model.safetensors").read_text() == "model.safetensors of step 4"
    (trash,) = [n for n in os.listdir(tmp_path) if n.startswith(".trash-")]
    assert trash == f".trash-checkpoint-4-{os.getpid()}"
    assert C.clean_partial(str(tmp_path)) == [str(tmp_path / trash)]


def test_a_leftover_that_cannot_be_removed_yet_does_not_stop_the_cleaning(tmp_path, monkeypatch):
    _complete(tmp_path, 1)
    for name in (".staging-checkpoint-2", ".trash-final-9"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    _busy_rmdir(monkeypatch, ".staging-")
    assert str(tmp_path / ".trash-final-9") in C.clean_partial(str(tmp_path))  # no error: the next run retries
    assert sorted(os.listdir(tmp_path)) == [".staging-checkpoint-2", "checkpoint-1"]


# ------------------------------------------------ smaller promises: nested syncs, final/, free space, full disks, optimizer state

Usage = namedtuple("Usage", "total used free")
TORCH_WRITE_FAILURE = "[enforce fail at inline_container.cc:664] . unexpected pos 1152 vs 1046"


def _staged_deepspeed(run_dir, step):
    """A staged checkpoint as DeepSpeed writes one: the weights, and the optimizer's shards in global_step<N>/."""
    folder = _staged(run_dir, step, files=("model.safetensors",))
    (folder / f"global_step{step}").mkdir()
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
    path = C.finalize(str(_staged_deepspeed(tmp_path, 3)), str(tmp_path), 3)
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
        staged = _staged_deepspeed(run, 5)
        (staged / "model.safetensors").unlink()
        (staged / weights).write_text("{}")
        ckpt = C.finalize(str(staged), str(run), 5)
        final = C.export_final(ckpt, str(run))
        assert sorted(os.listdir(final)) == sorted([C.MARKER, weights]) and C.marker_step(final) == 5
        assert sorted(os.listdir(run)) == ["checkpoint-5", "final"]


def test_a_stale_staging_of_final_is_replaced_not_mixed_in(tmp_path):
    ckpt = C.finalize(str(_staged_deepspeed(tmp_path, 2)), str(tmp_path), 2)
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
