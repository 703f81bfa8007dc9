"""Heartbeat edge cases with a controlled clock (the fault-injection tests in test_watchdog.py cover the rest): the
rate limit's boundary, min_interval 0, and a phase's start time that must not outlive the phase."""

from __future__ import annotations

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
