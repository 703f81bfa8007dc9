"""Heartbeat file: the trainer rewrites a tiny JSON file as it progresses so the watchdog can tell a hang from work.

It must stay cheap and must never raise into the training loop; it only reports, it decides nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import warnings
from typing import Iterator

HEARTBEAT_FILENAME = "heartbeat.json"
# The watchdog exports this so the trainer writes exactly where the watchdog looks, whatever its output_dir.
HEARTBEAT_ENV = "VQRL_HEARTBEAT"
# A run that stops on a mistake in its configuration or data exits with this code, and under a watchdog also writes
# a heartbeat in this phase (launchers such as accelerate or torchrun turn every failure into exit 1). The watchdog
# never retries it: the next attempt would fail the same way.
EXIT_CONFIG_ERROR = 2
CONFIG_ERROR_PHASE = "config_error"


def heartbeat_path(output_dir: str | os.PathLike) -> str:
    """Where the heartbeat lives: $VQRL_HEARTBEAT when the watchdog set it, else <output_dir>/heartbeat.json."""
    return os.environ.get(HEARTBEAT_ENV) or os.path.join(os.fspath(output_dir), HEARTBEAT_FILENAME)


def read_heartbeat(path: str | os.PathLike) -> dict | None:
    """The last heartbeat as a dict, or None when the file is missing, unreadable or not a heartbeat."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("time"), (int, float)):
        return None
    step = data.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return None
    return data


def report_config_error(message: str) -> bool:
    """Under a watchdog ($VQRL_HEARTBEAT set): record that this run stopped on a configuration error, with why.
    Returns whether it was written; never raises."""
    path = os.environ.get(HEARTBEAT_ENV)
    if not path:
        return False
    record = {"step": None, "phase": CONFIG_ERROR_PHASE, "reason": message[:2000], "time": time.time(),
              "pid": os.getpid()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Heartbeat(path)._write(record)


class Heartbeat:
    """Writes {"step", "phase", "time", "pid"} atomically (temp file + os.replace), so a reader never sees half.

    Identical (step, phase) beats closer than `min_interval` seconds are skipped, so calling beat() several
    times per step costs nothing; a new step or phase is always written. Thread-safe.
    """

    def __init__(self, path: str | os.PathLike, min_interval: float = 1.0):
        self.path = os.fspath(path)
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._last: tuple[int, str] | None = None
        self._last_time = float("-inf")
        self._warned = False
        self._phase_started: float | None = None
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        """A process killed between mkstemp and os.replace leaves a temp file; sweep old ones (not a live writer's)."""
        directory = os.path.dirname(self.path) or "."
        try:
            names = [n for n in os.listdir(directory) if n.startswith(".heartbeat.") and n.endswith(".tmp")]
        except OSError:
            return
        for name in names:
            with contextlib.suppress(OSError):
                full = os.path.join(directory, name)
                if time.time() - os.path.getmtime(full) > 60:
                    os.unlink(full)

    def beat(self, step: int, phase: str = "train", force: bool = False) -> bool:
        """Record that `phase` of `step` is alive; returns whether the file was written."""
        key = (int(step), str(phase))
        now = time.monotonic()
        with self._lock:
            if not force and key == self._last and now - self._last_time < self.min_interval:
                return False
            record = {"step": key[0], "phase": key[1], "time": time.time(), "pid": os.getpid()}
            if self._phase_started is not None:
                record["phase_started"] = self._phase_started
            if not self._write(record):
                return False
            self._last, self._last_time = key, now
            return True

    def _write(self, record: dict) -> bool:
        directory = os.path.dirname(self.path) or "."
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".heartbeat.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)
            return True
        except OSError as exc:  # a full or flaky disk must not kill a week-long run; the watchdog will notice
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if not self._warned:
                self._warned = True
                warnings.warn(f"heartbeat: cannot write {self.path}: {exc}", RuntimeWarning, stacklevel=3)
            return False

    @contextlib.contextmanager
    def phase(self, name: str, step: int, interval: float = 30.0, max_seconds: float | None = 7200.0) -> Iterator[None]:
        """Keep beating from a daemon thread while a long phase (generation, saving) runs in this one.

        The thread stops after `max_seconds` even if the block has not ended, so a phase that is truly stuck
        (e.g. a collective that never returns) still goes stale and the watchdog still sees the hang.
        """
        stop = threading.Event()
        started = time.time()
        with self._lock:
            self._phase_started = started
        self.beat(step, name, force=True)

        def keep_beating() -> None:
            deadline = time.monotonic() + max_seconds if max_seconds is not None else None
            while not stop.wait(interval):
                if deadline is not None and time.monotonic() >= deadline:
                    return
                self.beat(step, name, force=True)

        thread = threading.Thread(target=keep_beating, name=f"heartbeat-{name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with self._lock:
                self._phase_started = None
