"""Crash-safe checkpoints: staged writes, atomic rename, a completion marker, and choosing what to resume from.

A checkpoint (or final/) without its marker is never resumed from, whatever its name; this module never deletes a
complete one. It also tells a full disk apart from other write failures, since torch hides ENOSPC behind its own text.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time

STAGING_PREFIX = ".staging-checkpoint-"
FINAL = "final"
FINAL_STAGING = ".staging-final"
MARKER = "vqrl_complete.json"
RESUME_ENV = "VQRL_RESUME"  # the watchdog sets it on restarts; `--resume` wins over it
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER_PREFIXES = (".staging-", ".trash-")
# what a checkpoint holds beyond the model: left out of final/ when final/ is exported from a checkpoint
_TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|trainer_state\.json|rng_state.*\.pth|"
                             + re.escape(MARKER) + r")$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


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


def publish(staged: str, dest: str, step: int) -> str:
    """Mark the fully written folder `staged` complete for `step`, then move it to `dest` in one rename (an older
    `dest` is set aside first, so a crash leaves either the old folder, or the new one, or none: never half)."""
    with open(os.path.join(staged, MARKER), "w") as f:
        json.dump({"step": step, "time": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_tree(staged)
    if os.path.exists(dest):  # an older, possibly partial, copy: set it aside first
        trash = os.path.join(os.path.dirname(dest), f".trash-{os.path.basename(dest)}-{os.getpid()}")
        os.replace(dest, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(staged, dest)
    return dest


def finalize(staged: str, run_dir: str, step: int) -> str:
    """Mark `staged` complete and move it to `run_dir/checkpoint-<step>` (replacing a stale one)."""
    final = publish(staged, os.path.join(run_dir, f"checkpoint-{step}"), step)
    shutil.rmtree(os.path.dirname(staged), ignore_errors=True)  # the now-empty staging root
    return final


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def marker_step(path: str) -> int | None:
    """The step a complete checkpoint (or final/) was written at; None when it has no readable marker."""
    try:
        with open(os.path.join(path, MARKER)) as f:
            step = json.load(f).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def export_final(checkpoint: str, run_dir: str) -> str:
    """Write `run_dir/final` from a complete checkpoint: its weights, config and processor files, not its optimizer,
    scheduler or RNG state (what `save_model` would have written at that step), staged and published atomically."""
    step = marker_step(checkpoint)
    if step is None:
        raise ValueError(f"{checkpoint} is not a complete checkpoint")
    names = [n for n in sorted(os.listdir(checkpoint)) if os.path.isfile(os.path.join(checkpoint, n))]
    if not any(n in _WEIGHTS for n in names):
        raise ValueError(f"{checkpoint} holds no consolidated weights ({' or '.join(_WEIGHTS)}): cannot write "
                         f"{FINAL}/ from it (a ZeRO-3 run needs stage3_gather_16bit_weights_on_model_save)")
    staging = os.path.join(run_dir, FINAL_STAGING)
    clear_dir(staging)
    os.makedirs(staging)
    for name in names:
        if not _TRAINING_STATE.match(name):
            shutil.copy2(os.path.join(checkpoint, name), os.path.join(staging, name))
    return publish(staging, os.path.join(run_dir, FINAL), step)


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
    """Remove leftovers of a crashed save (staging and trash folders of checkpoints and of final/; never a complete
    checkpoint); return what was removed."""
    removed = []
    if not os.path.isdir(run_dir):
        return removed
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if name.startswith(_LEFTOVER_PREFIXES) and os.path.isdir(path):
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
        what = "not a folder" if os.path.exists(resume) else "no such checkpoint folder"
        raise FileNotFoundError(f"--resume {resume}: {what} (auto: the newest complete checkpoint in output_dir; "
                                "none: start afresh)")
    if not is_complete(resume):
        raise ValueError(f"--resume {resume}: checkpoint has no {MARKER}; it may be half-written (auto picks the "
                         "newest complete one)")
    return resume


# ------------------------------------------------------------------------------------------------ a full disk

_NO_SPACE_TEXT = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")
# torch's zip writer reports a failed write as "unexpected pos N vs M" or "PytorchStreamWriter failed writing file"
_WRITER_FAILURE_TEXT = ("unexpected pos", "pytorchstreamwriter failed", "file write failed")
NEARLY_FULL_BYTES = 64 * 2**20


def free_bytes(path: str) -> int | None:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def no_space_left(exc: BaseException, path: str) -> bool:
    """Whether `exc`, or an exception it came from, means the disk holding `path` is full: ENOSPC / EDQUOT, a
    library's text for it, or a torch writer failure (which hides the errno) while that disk is nearly full."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(e).lower() for t in _NO_SPACE_TEXT):
            return True
    if any(t in str(e).lower() for e in chain for t in _WRITER_FAILURE_TEXT):
        free = free_bytes(path)
        return free is not None and free < NEARLY_FULL_BYTES
    return False


def has_optimizer_state(path: str) -> bool:
    """Whether a checkpoint holds optimizer state: transformers' optimizer file, or DeepSpeed's global_step* folder.
    Checkpoints written with --save_only_model hold the weights (and trainer state) only."""
    if any(os.path.isfile(os.path.join(path, name)) for name in ("optimizer.pt", "optimizer.bin")):
        return True
    return any(name.startswith("global_step") and os.path.isdir(os.path.join(path, name)) for name in os.listdir(path))
