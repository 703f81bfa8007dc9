"""The watchdog's stop sequence and give-up paths, timed on a fake clock with a fake run: exact waits and events in
milliseconds instead of real grace periods and subprocess timeouts."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

import vqrl.watchdog as watchdog_module
from vqrl.watchdog import Watchdog, build_parser
from watchdog_utils import bare_dog, events, self_pipe

PID = 4242


class FakeRun:
    """A clock that only sleeps move, a run whose processes go when a chosen signal reaches them, and a record of
    every signal sent and every nap taken. A loop that never sleeps fails the test instead of hanging it."""

    def __init__(self, dog: Watchdog, monkeypatch, dies_on=(signal.SIGKILL,), on_check=None):
        self.dog, self.now, self.dies_on, self.on_check = dog, 0.0, set(dies_on), on_check
        self.sent, self.naps, self.checks, self.alive = [], [], 0, True
        monkeypatch.setattr(watchdog_module, "time", SimpleNamespace(monotonic=lambda: self.now, time=time.time))
        monkeypatch.setattr(dog, "_track_descendants", lambda: None)
        monkeypatch.setattr(dog, "_survivors", self.survivors)
        monkeypatch.setattr(dog, "_signal_run", self.signal_run)
        monkeypatch.setattr(dog, "_sleep", self.sleep)

    def survivors(self, pgid):
        assert pgid == PID
        self.checks += 1
        if self.checks > 10_000:
            raise AssertionError("the stop sequence loops without sleeping")
        if self.on_check is not None:
            self.on_check(self)
        return [PID] if self.alive else []

    def signal_run(self, pgid, sig):
        assert pgid == PID
        self.sent.append(sig)
        if sig in self.dies_on:
            self.alive = False

    def sleep(self, seconds, handled=0):
        if len(self.dog.pending) > handled or seconds <= 0:  # the real _sleep's contract: a newer signal wakes it
            return
        self.naps.append(seconds)
        self.now += seconds


def make_dog(tmp_path, monkeypatch, *options) -> Watchdog:
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    dog = bare_dog(tmp_path, *options)
    dog.proc = SimpleNamespace(pid=PID, returncode=-signal.SIGKILL)
    return dog


def test_the_grace_period_is_slept_in_50_ms_naps_up_to_its_exact_end(tmp_path, monkeypatch):
    """After SIGTERM (then SIGCONT) the run gets exactly --grace seconds: naps of 50 ms, the last one only what is
    left, then SIGKILL; a run gone after SIGKILL is reaped and the stop succeeds."""
    dog = make_dog(tmp_path, monkeypatch, "--grace", "0.12")
    run = FakeRun(dog, monkeypatch)
    assert dog.stop_run("hang") is True
    assert run.sent == [signal.SIGTERM, signal.SIGCONT, signal.SIGKILL]
    assert run.naps == pytest.approx([0.05, 0.05, 0.02, 0.05])
    assert run.now == pytest.approx(0.17)
    kills = [e for e in events(tmp_path) if e["event"] == "kill"]
    assert [(e["signal"], e["reason"], e["pgid"]) for e in kills] == [("SIGTERM", "hang", PID), ("SIGKILL", "hang", PID)]
    assert kills[1]["survivors"] == [PID]
    assert "1 process(es) still alive after SIGTERM; sending SIGKILL" in dog.stderr.getvalue()


def test_a_run_that_goes_on_sigterm_gets_no_sigkill(tmp_path, monkeypatch):
    dog = make_dog(tmp_path, monkeypatch, "--grace", "30")
    run = FakeRun(dog, monkeypatch, dies_on=(signal.SIGINT,))
    assert dog.stop_run("cleanup after exit", sig=signal.SIGINT) is True
    assert run.sent == [signal.SIGINT, signal.SIGCONT] and run.naps == [] and run.now == 0.0
    assert [(e["event"], e["signal"]) for e in events(tmp_path)] == [("kill", "SIGINT")]


def test_nothing_left_to_stop_sends_nothing(tmp_path, monkeypatch):
    dog = make_dog(tmp_path, monkeypatch, "--grace", "30")
    run = FakeRun(dog, monkeypatch)
    run.alive = False
    assert dog.stop_run("cleanup after exit") is True
    assert run.sent == [] and not (tmp_path / "watchdog.jsonl").exists()


@pytest.mark.parametrize("grace, patience", [(0.1, 60), (40.0, 80)])
def test_processes_that_survive_sigkill_for_the_patience_make_the_stop_fail(tmp_path, monkeypatch, grace, patience):
    """Processes stuck in the kernel are SIGKILLed every 50 ms for max(60 s, 2 x grace); then the stop fails (the
    caller gives up rather than restart onto GPUs they still hold) and says so."""
    dog = make_dog(tmp_path, monkeypatch, "--grace", str(grace))
    run = FakeRun(dog, monkeypatch, dies_on=())
    assert dog.stop_run("hang") is False
    assert run.now == pytest.approx(grace + patience, abs=0.06)
    assert run.sent.count(signal.SIGKILL) == pytest.approx(patience / 0.05, abs=1)
    last = events(tmp_path)[-1]
    assert last["event"] == "kill" and last["reason"] == "unkillable" and last["survivors"] == [PID]
    assert f"processes [{PID}] survived SIGKILL for {patience} s" in dog.stderr.getvalue()


def test_a_second_stop_signal_during_the_grace_period_sends_sigkill_at_once(tmp_path, monkeypatch):
    """A second Ctrl-C while the run has its grace period ends the wait: SIGKILL follows without a nap."""
    def second_ctrl_c(run):
        if run.checks == 2:  # the first check of the grace loop
            run.dog.pending.append(signal.SIGINT)

    dog = make_dog(tmp_path, monkeypatch, "--grace", "30")
    run = FakeRun(dog, monkeypatch, on_check=second_ctrl_c)
    assert dog.stop_run("received SIGINT", sig=signal.SIGINT) is True
    assert run.sent == [signal.SIGINT, signal.SIGCONT, signal.SIGKILL]
    assert run.naps == [0.05]  # the SIGKILL round's only
    assert [e["signal"] for e in events(tmp_path)] == ["SIGINT", "SIGKILL"]


def test_sigkill_rounds_after_a_second_stop_signal_still_nap(tmp_path, monkeypatch):
    """A second Ctrl-C ends the grace period, but the SIGKILL rounds that follow still wait 50 ms between process
    scans (each scan walks every process of the node): 0.3 s of survivors is about 6 rounds, not a busy loop."""
    def second_ctrl_c(run):
        if run.checks == 2:
            run.dog.pending.append(signal.SIGINT)
        if run.now >= 0.3:
            run.alive = False

    dog = make_dog(tmp_path, monkeypatch, "--grace", "5")
    run = FakeRun(dog, monkeypatch, dies_on=(), on_check=second_ctrl_c)
    assert dog.stop_run("received SIGINT", sig=signal.SIGINT) is True
    assert run.checks <= 12 and run.naps == [0.05] * 6


def test_a_stop_signal_already_pending_does_not_cut_the_grace_period_short(tmp_path, monkeypatch):
    """Only a signal newer than the one being handled ends the grace period early."""
    dog = make_dog(tmp_path, monkeypatch, "--grace", "0.1")
    dog.pending.append(signal.SIGTERM)
    run = FakeRun(dog, monkeypatch)
    assert dog.stop_run("received SIGTERM") is True
    assert run.naps == pytest.approx([0.05, 0.05, 0.05])


def test_survivors_skips_a_process_that_vanished_while_listed(tmp_path, monkeypatch):
    """A process that exits between the listing and the look-up (or cannot be inspected) is skipped; the scan goes
    on to the run's live members after it."""
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    dog = bare_dog(tmp_path)
    member = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        gone = max(psutil.pids()) + 100_000
        listed = [SimpleNamespace(info={"pid": gone, "status": psutil.STATUS_RUNNING, "create_time": 0.0}),
                  SimpleNamespace(info={"pid": 1, "status": psutil.STATUS_ZOMBIE, "create_time": 0.0}),
                  SimpleNamespace(info={"pid": member.pid, "status": psutil.STATUS_SLEEPING, "create_time": 0.0})]
        monkeypatch.setattr(watchdog_module.psutil, "process_iter", lambda attrs: iter(listed))
        assert dog._survivors(member.pid) == [member.pid]
        assert dog._survivors(member.pid + 1) == []
    finally:
        member.kill()
        member.wait()


def test_a_tracked_descendant_counts_only_while_its_start_time_matches(tmp_path, monkeypatch):
    """A descendant that left the group is a survivor while its pid still names the same process (same start
    time); a reused pid (another start time) is not."""
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    dog = bare_dog(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        started = psutil.Process(other.pid).create_time()
        dog.tracked = {other.pid: started}
        assert dog._survivors(-99) == [other.pid]
        dog.tracked = {other.pid: started + 0.01}
        assert dog._survivors(-99) == []
    finally:
        other.kill()
        other.wait()


def test_stopping_on_a_signal_before_any_run_returns_its_exit_code(tmp_path, monkeypatch):
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    dog = bare_dog(tmp_path)
    assert dog._stop_on_signal(signal.SIGTERM) == 143
    assert dog._stop_on_signal(signal.SIGUSR1) == 128 + signal.SIGUSR1
    assert [(e["event"], e["watchdog_exit"]) for e in events(tmp_path)] == [("signal", 143), ("signal", 138)]


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text("import sys, time\n" + body)
    return [sys.executable, str(path)]


def _opts(tmp_path, *extra):
    return build_parser().parse_args(["--output_dir", str(tmp_path / "run"), "--backoff", "0", "--grace", "1",
                                      "--poll", "0.05", "--hang_timeout", "5", "--startup_timeout", "0.3", *extra])


@pytest.mark.parametrize("how, body", [("ended", "sys.exit(3)\n"), ("hung", "time.sleep(30)\n")])
def test_a_run_whose_processes_survive_sigkill_is_given_up_on(tmp_path, monkeypatch, how, body):
    """When the stop sequence fails (processes survive SIGKILL), the watchdog gives up with exit 1 and says why,
    instead of restarting onto what they still hold."""
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    startup = "0.3" if how == "hung" else "60"  # an ended run must exit, not be called hung, on a slow machine
    dog = Watchdog(_opts(tmp_path, "--startup_timeout", startup), _script(tmp_path, body), stderr=io.StringIO())
    real_stop = dog.stop_run
    monkeypatch.setattr(dog, "stop_run", lambda reason, sig=signal.SIGTERM: real_stop(reason, sig) and False)
    assert dog.run() == 1
    last = events(tmp_path / "run")[-1]
    assert last["event"] == "give_up" and last["watchdog_exit"] == 1
    assert last["reason"] == f"processes of the {how} run survive SIGKILL"
    assert last["exit_code"] == (3 if how == "ended" else None)
    assert dog.proc.poll() is not None


def test_a_watchdog_that_fails_mid_watch_stops_its_run_first(tmp_path, monkeypatch):
    """A bug in the watchdog must not orphan the run: the live run is stopped before the error propagates."""
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    dog = Watchdog(_opts(tmp_path), _script(tmp_path, "time.sleep(30)\n"), stderr=io.StringIO())

    def broken_watch():
        raise RuntimeError("watchdog bug")

    monkeypatch.setattr(dog, "_watch", broken_watch)
    with pytest.raises(RuntimeError, match="watchdog bug"):
        dog.run()
    assert dog.proc.poll() == -signal.SIGTERM
    assert [(e["event"], e["reason"]) for e in events(tmp_path / "run")][-1] == ("kill", "watchdog exiting")


def test_the_grace_period_after_a_stop_signal_is_slept_not_spun(tmp_path, monkeypatch):
    """Ctrl-C (SIGTERM, SIGHUP) forwards the signal and gives the run --grace seconds: the watchdog waits them in
    50 ms naps, as it does for a hang, not by rescanning the node's processes in a tight loop."""
    dog = make_dog(tmp_path, monkeypatch, "--grace", "0.3")
    dog.proc = SimpleNamespace(pid=PID, returncode=-signal.SIGKILL, poll=lambda: None)
    state = {"alive": True, "checks": 0}

    def survivors(pgid):
        state["checks"] += 1
        return [PID] if state["alive"] else []

    def signal_run(pgid, sig):
        if sig == signal.SIGKILL:
            state["alive"] = False

    monkeypatch.setattr(dog, "_track_descendants", lambda: None)
    monkeypatch.setattr(dog, "_survivors", survivors)
    monkeypatch.setattr(dog, "_signal_run", signal_run)
    with self_pipe(dog):
        dog.pending.append(signal.SIGTERM)  # as the signal handler leaves it
        assert dog._stop_on_signal(signal.SIGTERM) == 143
    assert state["checks"] <= 20, f"{state['checks']} process scans in a 0.3 s grace period"


def test_a_run_that_never_beats_is_hung_after_the_startup_timeout_to_a_tenth_of_a_second(tmp_path, monkeypatch):
    """The hang event of a run that never wrote a heartbeat: its age after the start to 0.1 s, no step or phase,
    and why; then the stop and the give-up (no restarts allowed). Clock and run are fakes: exact figures."""
    dog = make_dog(tmp_path, monkeypatch, "--startup_timeout", "0.6", "--hang_timeout", "5", "--poll", "0.25",
                   "--max_restarts", "0")
    run = FakeRun(dog, monkeypatch, dies_on=(signal.SIGTERM,))

    def start(command, resume):
        dog.proc = SimpleNamespace(pid=PID, returncode=None, poll=lambda: None)

    def stop_run(reason, sig=signal.SIGTERM):
        dog.proc.returncode = -sig
        return True

    monkeypatch.setattr(dog, "_start", start)
    monkeypatch.setattr(dog, "stop_run", stop_run)
    assert dog._loop() == 1
    assert run.naps == [0.25, 0.25, 0.25]
    hang, exit_, give_up = events(tmp_path)
    assert (hang["event"], hang["age"], hang["step"], hang["phase"]) == ("hang", 0.8, None, None)
    assert hang["reason"] == (f"no heartbeat at {dog.hb_path} within 1 s of start (--startup_timeout 0.6); is the "
                              "trainer writing it?")
    assert (exit_["event"], exit_["exit_code"], exit_["reason"]) == ("exit", -signal.SIGTERM, "killed after hang")
    assert (give_up["event"], give_up["reason"]) == ("give_up", "0 restarts within the last 86400 s already "
                                                               "(--max_restarts 0)")
