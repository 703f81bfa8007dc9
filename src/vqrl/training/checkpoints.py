"""Crash-safe checkpoints: staged writes, atomic rename, a completion marker, and choosing what to resume from.

A checkpoint without its marker is never resumed from, whatever its name; this module never deletes a complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

STAGING_PREFIX = ".staging-checkpoint-"
MARKER = "vqrl_complete.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def clear_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(path: str) -> None:
    """Flush file contents to disk before the rename makes them visible (a power cut must not expose zeros)."""
    for root, _, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def finalize(staged: str, run_dir: str, step: int) -> str:
    """Mark `staged` complete and move it to `run_dir/checkpoint-<step>` (replacing a stale one)."""
    final = os.path.join(run_dir, f"checkpoint-{step}")
    with open(os.path.join(staged, MARKER), "w") as f:
        json.dump({"step": step, "time": time.time()}, f)
    _fsync_tree(staged)
    if os.path.exists(final):  # an older, possibly partial, copy of the same step: set it aside first
        trash = os.path.join(run_dir, f".trash-checkpoint-{step}-{os.getpid()}")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(staged, final)
    shutil.rmtree(os.path.dirname(staged), ignore_errors=True)  # the now-empty staging root
    return final


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def complete_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint in `run_dir`, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    out = []
    for name in os.listdir(run_dir):
        m = _CKPT.match(name)
        path = os.path.join(run_dir, name)
        if m and is_complete(path):
            out.append((int(m.group(1)), path))
    return sorted(out)


def latest_complete(run_dir: str) -> str | None:
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def clean_partial(run_dir: str) -> list[str]:
    """Remove staging leftovers of a crashed save (never a complete checkpoint); return what was removed."""
    removed = []
    if not os.path.isdir(run_dir):
        return removed
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.startswith((STAGING_PREFIX, ".trash-checkpoint-")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def resolve_resume(resume: str | None, run_dir: str) -> str | None:
    """`auto` -> newest complete checkpoint (or None on a fresh run); a path must be a complete checkpoint."""
    if resume in (None, "", "none", "false", "False"):
        return None
    if resume in ("auto", "true", "True"):
        return latest_complete(run_dir)
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder")
    if not is_complete(resume):
        raise ValueError(f"--resume {resume}: checkpoint has no {MARKER}; it may be half-written")
    return resume
