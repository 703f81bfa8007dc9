"""Heartbeat edge cases (the fault-injection tests in test_watchdog.py cover the rest): the rate limit's boundary and
min_interval 0 with a controlled clock, a phase's start time that must not outlive the phase, a phase that ends
only when its beating thread has, and one warning (not one per beat) for a heartbeat that cannot be written."""

from __future__ import annotations

import threading
import time

from vqrl.training import heartbeat as hb_module
from vqrl.training.heartbeat import Heartbeat, read_heartbeat


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_identical_beats_are_skipped_only_while_closer_than_min_interval(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(hb_module.time, "monotonic", clock)
    hb = Heartbeat(tmp_path / "heartbeat.json", min_interval=10.0)
    assert hb.beat(3, "train")
    clock.now += 9.999
    assert not hb.beat(3, "train")
    clock.now += 0.001  # exactly min_interval after the last write: no longer "closer than"
    assert hb.beat(3, "train")
    assert not hb.beat(3, "train")
    assert hb.beat(3, "train", force=True)


def test_min_interval_zero_writes_every_beat_even_within_one_clock_tick(tmp_path, monkeypatch):
    monkeypatch.setattr(hb_module.time, "monotonic", _Clock())  # the clock never moves
    hb = Heartbeat(tmp_path / "heartbeat.json", min_interval=0.0)
    assert all(hb.beat(1, "train") for _ in range(3))


def test_phase_start_is_reported_during_the_phase_only(tmp_path):
    path = tmp_path / "heartbeat.json"
    hb = Heartbeat(path, min_interval=0.0)
    hb.beat(1, "train")
    assert "phase_started" not in read_heartbeat(path)
    with hb.phase("save", 1, interval=60.0):
        inside = read_heartbeat(path)
        assert inside["phase"] == "save" and inside["phase_started"] <= inside["time"]
    hb.beat(2, "train")
    after = read_heartbeat(path)
    assert after["step"] == 2 and "phase_started" not in after


def test_a_phase_ends_only_after_its_beating_thread_has(tmp_path, monkeypatch):
    """The phase thread's interval runs out just as the block ends, and the thread is slow to act on it: leaving
    `with hb.phase(...)` still waits for that last beat, so no stale phase beat lands after the block (it would
    overwrite the next step's beat and carry a phase that has ended)."""
    real_event = threading.Event

    class LateTimeout(real_event):
        def wait(self, timeout=None):
            if getattr(self, "raced", False):
                return super().wait(timeout)
            self.raced = True
            super().wait()  # the block ends (set) ...
            time.sleep(0.2)  # ... while this thread, descheduled, has yet to see that
            return False  # its interval had run out

    made = []
    monkeypatch.setattr(hb_module.threading, "Event", lambda: made.append(1) or (LateTimeout if len(made) == 1
                                                                                     else real_event)())
    hb = Heartbeat(tmp_path / "heartbeat.json", min_interval=0.0)
    writes, real_write = [], hb._write
    hb._write = lambda record: writes.append((threading.current_thread().name, time.monotonic())) or \
        real_write(record)
    with hb.phase("save", 5, interval=60.0):
        pass
    ended = time.monotonic()
    time.sleep(0.5)
    late = [t for name, t in writes if name.startswith("heartbeat-")]
    assert late and max(late) <= ended


def test_an_unwritable_heartbeat_warns_once_not_at_every_beat(tmp_path):
    import warnings

    blocker = tmp_path / "file"
    blocker.write_text("x")
    hb = Heartbeat(blocker / "heartbeat.json", min_interval=0.0)  # its folder is a file: every write fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [hb.beat(step) for step in range(5)] == [False] * 5
    assert [str(w.message).split(":")[0] for w in caught] == ["heartbeat"]
    assert caught[0].category is RuntimeWarning and str(blocker / "heartbeat.json") in str(caught[0].message)


def test_a_failed_write_leaves_no_temporary_file_and_the_last_beat_stands(tmp_path, monkeypatch):
    """A write that fails at the rename (a flaky disk) removes its temporary file: a week of failing beats does not
    fill the output folder, and the heartbeat read is the last whole one."""
    import warnings

    path = tmp_path / "heartbeat.json"
    hb = Heartbeat(path, min_interval=0.0)
    assert hb.beat(1)
    real_replace = hb_module.os.replace

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(hb_module.os, "replace", failing_replace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [hb.beat(step) for step in (2, 3)] == [False, False]
    monkeypatch.setattr(hb_module.os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heartbeat.json"]
    assert read_heartbeat(str(path))["step"] == 1


def test_reporting_a_config_error_where_it_cannot_be_written_is_quiet(tmp_path, monkeypatch):
    """The config-error record is written on the way out of a failed start: if it cannot be written, that is not
    a second warning on top of the configuration error the user must read."""
    import warnings

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(hb_module.HEARTBEAT_ENV, str(blocker / "heartbeat.json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hb_module.report_config_error("--pd_gate: unknown reward") is False
    assert caught == []
    monkeypatch.setenv(hb_module.HEARTBEAT_ENV, str(tmp_path / "heartbeat.json"))
    assert hb_module.report_config_error("--pd_gate: unknown reward") is True
    assert read_heartbeat(str(tmp_path / "heartbeat.json"))["reason"] == "--pd_gate: unknown reward"


def test_a_step_must_be_an_integer_or_none(tmp_path):
    """A config-error heartbeat has no step (null) and is read; a step of true, 1.5 or "3" is no heartbeat."""
    import json

    path = tmp_path / "heartbeat.json"
    path.write_text(json.dumps({"step": None, "phase": "config_error", "time": 1.0}))
    assert read_heartbeat(path) == {"step": None, "phase": "config_error", "time": 1.0}
    path.write_text(json.dumps({"phase": "train", "time": 2}))
    assert read_heartbeat(path) == {"phase": "train", "time": 2}
    for step in (True, 1.5, "3"):
        path.write_text(json.dumps({"step": step, "phase": "train", "time": 1.0}))
        assert read_heartbeat(path) is None, step


def test_a_heartbeat_in_the_working_folder_is_written_and_swept(tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    old = tmp_path / ".heartbeat.dead.tmp"
    others = [tmp_path / "model.tmp", tmp_path / ".heartbeat.json.bak"]  # not the heartbeat's temp files
    for path in [old, *others]:
        path.write_text("{")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    hb = Heartbeat("heartbeat.json", min_interval=0.0)
    assert not old.exists() and all(p.exists() for p in others)
    assert hb.beat(2, "train") and read_heartbeat(tmp_path / "heartbeat.json")["step"] == 2


def test_the_unwritable_warning_points_at_the_caller_of_beat(tmp_path):
    import warnings

    blocker = tmp_path / "file"
    blocker.write_text("x")
    hb = Heartbeat(blocker / "heartbeat.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hb.beat(1)
    assert [w.filename for w in caught] == [__file__]


def test_a_phase_announces_itself_even_right_after_the_same_beat(tmp_path):
    """Entering a phase writes its first beat (with its start time) even when the same step and phase were beaten
    within min_interval; its beating thread is a daemon (a stuck phase cannot keep the process from exiting)."""
    path = tmp_path / "heartbeat.json"
    hb = Heartbeat(path, min_interval=60.0)
    assert hb.beat(5, "save")
    with hb.phase("save", 5, interval=60.0):
        inside = read_heartbeat(path)
        (thread,) = [t for t in threading.enumerate() if t.name == "heartbeat-save"]
        assert thread.daemon
    assert inside["phase"] == "save" and "phase_started" in inside


def test_a_config_error_is_recorded_only_under_a_watchdog(monkeypatch):
    monkeypatch.delenv(hb_module.HEARTBEAT_ENV, raising=False)
    assert hb_module.report_config_error("bad flag") is False
    monkeypatch.setenv(hb_module.HEARTBEAT_ENV, "")
    assert hb_module.report_config_error("bad flag") is False
