"""The watchdog's rules stated exactly: where it looks for the run, why a failure is a configuration error, what each
event records, that it wakes at once on a child's exit or a stop signal yet never spins, that it stops every process
the run started (even daemons), and how progress, back-off and the same-step limit count. In-process, sub-second."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import vqrl.watchdog as watchdog_module
from vqrl.watchdog import Watchdog, build_parser, config_error, find_output_dir, main
from watchdog_utils import (FAST, alive, bare_dog, child_command, deadline, environ_as, events, kinds, self_pipe,
                            watch, watchdog_env)


def test_the_output_folder_is_found_in_either_spelling_and_a_trailing_flag_is_ignored():
    assert find_output_dir(["t", "--output-dir", "o1"], {}) == "o1"
    assert find_output_dir(["t", "--output-dir=o2"], {}) == "o2"
    assert find_output_dir(["t", "--output_dir=a=b"], {}) == "a=b"
    assert find_output_dir(["t", "--output_dir"], {"OUTPUT": "o3"}) == "o3"  # a flag with no value after it
    assert find_output_dir(["t", "--output_dir"], {}) == os.getcwd()
    assert find_output_dir(["t", "--output_dirx", "o4"], {"OUTPUT": ""}) == os.getcwd()


def test_a_configuration_error_is_said_in_one_line_of_at_most_1000_characters():
    hb = {"phase": "config_error", "reason": "bad --pd_gate\nunknown reward 'x'", "step": None}
    assert config_error(1, hb) == "bad --pd_gate; unknown reward 'x'"
    assert config_error(1, {"phase": "config_error", "reason": None}) == "configuration error"
    assert config_error(1, {"phase": "config_error"}) == "configuration error"
    assert config_error(1, {"phase": "config_error", "reason": "x" * 1500}) == "x" * 1000
    assert config_error(2, None) == ("exit code 2 (a configuration or usage error; its message is on the run's "
                                     "stderr)")
    assert config_error(2, {"phase": "train", "step": 3}).startswith("exit code 2 ")
    assert config_error(1, {"phase": "train", "step": 3}) is None and config_error(1, None) is None
    assert config_error(0, None) is None


def test_an_event_records_the_time_to_the_millisecond_the_attempt_and_the_runs_pid(tmp_path, monkeypatch):
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    monkeypatch.setattr(watchdog_module, "time", SimpleNamespace(time=lambda: 1_700_000_000.98765,
                                                                 monotonic=time.monotonic))
    dog = bare_dog(tmp_path, *FAST)
    dog.event("start", "no run yet")
    dog.attempt, dog.proc = 3, SimpleNamespace(pid=4321)
    dog.event("exit", "run ended", step=7, exit_code=-9)
    assert events(tmp_path) == [
        {"time": 1_700_000_000.988, "event": "start", "attempt": 0, "pid": None, "step": None, "exit_code": None,
         "reason": None},
        {"time": 1_700_000_000.988, "event": "exit", "attempt": 3, "pid": 4321, "step": 7, "exit_code": -9,
         "reason": None}]
    assert dog.stderr.getvalue().splitlines()[1].endswith(" attempt 3: run ended")


def test_a_wake_up_ends_one_sleep_only(tmp_path):
    """A signal's wake-up byte ends the sleep in progress and is used up with it: the next sleep sleeps its time,
    even after more wake-ups than one read takes."""
    with self_pipe(bare_dog(tmp_path, *FAST)) as dog:
        for _ in range(5000):
            dog._wake()
        t0 = time.monotonic()
        dog._sleep(5.0)
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        dog._sleep(0.2)
        assert time.monotonic() - t0 >= 0.19


def test_a_pending_stop_signal_skips_the_sleep_unless_it_is_the_one_being_handled(tmp_path):
    """A stop signal not yet acted on makes any sleep return at once, even when its wake-up byte was already used;
    the signal being handled (stop_run's naps) does not."""
    with self_pipe(bare_dog(tmp_path, *FAST)) as dog:
        dog.pending.append(signal.SIGTERM)
        t0 = time.monotonic()
        dog._sleep(5.0)
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        dog._sleep(0.2, handled=1)
        assert time.monotonic() - t0 >= 0.19


def test_the_watch_wakes_when_the_run_exits_not_at_the_next_poll_and_leaks_no_descriptor(tmp_path):
    fds = set(os.listdir("/proc/self/fd"))
    cmd = child_command(tmp_path, 'hb.beat(1, "train")\ntime.sleep(0.2)\n')
    t0 = time.monotonic()
    code, evs, err = watch(tmp_path / "run", ["--poll", "30"], cmd, seconds=20)
    assert code == 0 and time.monotonic() - t0 < 15, err
    assert set(os.listdir("/proc/self/fd")) <= fds  # the self-pipe is closed again (another test's may close too)


def test_a_stop_signal_during_a_long_back_off_ends_it_at_once(tmp_path):
    """SIGTERM arriving while the watchdog waits 30 s before a restart wakes it: it exits 143 without the restart."""
    crash = child_command(tmp_path, "sys.exit(1)\n")
    out = tmp_path / "run"
    timer = None

    def arm():
        nonlocal timer
        if timer is None:  # one SIGTERM only: a second back-off must not leave a timer to kill pytest later
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
            timer.start()

    class ArmedWatchdog(Watchdog):
        def event(self, kind, message, **fields):
            super().event(kind, message, **fields)
            if kind == "backoff":
                arm()

    opts = build_parser().parse_args(["--output_dir", str(out), *FAST, "--backoff", "30", "--max_backoff", "30"])
    t0 = time.monotonic()
    try:
        with deadline(20), environ_as(watchdog_env()):
            code = ArmedWatchdog(opts, crash, stderr=io.StringIO()).run()
    finally:
        if timer is not None:
            timer.cancel()
    assert code == 143 and time.monotonic() - t0 < 15
    assert [e["event"] for e in events(out)][-2:] == ["backoff", "signal"] and len(kinds(events(out), "start")) == 1


def test_the_watch_and_the_back_off_sleep_instead_of_spinning(tmp_path, monkeypatch):
    """Between heartbeat checks and during the back-off the watchdog sleeps (here: 50 ms polls over a 0.3 s run,
    then one 0.3 s back-off); it does not spin a core of the node it shares with the run."""
    out = tmp_path / "run"
    crash = child_command(tmp_path, 'time.sleep(0.3)\nsys.exit(5 if attempt == 1 else 0)\n')
    opts = build_parser().parse_args(["--output_dir", str(out), *FAST, "--backoff", "0.3", "--max_backoff", "0.3"])
    dog = Watchdog(opts, crash, stderr=io.StringIO())
    checks, naps, real_track, real_sleep = [], [], dog._track_descendants, dog._sleep
    monkeypatch.setattr(dog, "_track_descendants", lambda: (checks.append(1), real_track())[1])
    monkeypatch.setattr(dog, "_sleep", lambda seconds, *handled: (naps.append(seconds), real_sleep(seconds, *handled))[1])
    with deadline(15), environ_as(watchdog_env()):
        assert dog.run() == 0
    assert 4 <= len(checks) <= 400, len(checks)  # two attempts of 0.3 s and their start-up, polled every 50 ms
    assert any(0.1 < nap <= 0.3 for nap in naps), naps  # the back-off is one sleep (or a few, if woken)


def test_stop_run_finds_the_runs_descendants_itself(tmp_path):
    """Stopping a run the watch never polled (it hung before the first poll) still reaches a descendant that left
    the process group."""
    pid_file = tmp_path / "escaped.pid"
    body = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)'], start_new_session=True); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
            f"time.sleep(60)")
    dog = bare_dog(tmp_path, *FAST, "--grace", "2")
    dog.proc = subprocess.Popen([sys.executable, "-c", body], start_new_session=True)
    escaped = None
    try:
        with deadline(10), self_pipe(dog):
            while not pid_file.exists() or not pid_file.read_text():
                time.sleep(0.02)
            escaped = int(pid_file.read_text())
            assert dog.stop_run("test") is True
        assert dog.proc.returncode == -signal.SIGTERM and not alive(escaped)
    finally:
        if dog.proc.poll() is None:
            dog.proc.kill()
        if escaped is None and pid_file.exists() and pid_file.read_text():  # the test failed before reading it
            escaped = int(pid_file.read_text())
        if escaped is not None and alive(escaped):
            os.kill(escaped, signal.SIGKILL)


def test_a_daemon_the_run_started_is_stopped_with_it(tmp_path):
    """A daemon (double fork and setsid: its parent has exited, so it is no longer the run's descendant when the run
    is stopped) was seen while the run was watched; it goes with the hung run, not left to hold the GPUs."""
    pid_file = tmp_path / "daemon.pid"
    daemon = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    open({str(pid_file)!r}, 'w')"
              f".write(str(os.getpid()))\n    time.sleep(60)\nelse:\n    time.sleep(0.6)\n")
    body = f"""
        if attempt == 1:
            subprocess.Popen([sys.executable, "-c", {daemon!r}]).wait()  # the daemon's parent exits after 0.6 s
            hb.beat(1, "train")
            time.sleep(60)  # hangs
    """
    daemon_pid = None
    try:
        code, evs, _ = watch(tmp_path / "run", ["--hang_timeout", "0.3"], child_command(tmp_path, body), seconds=20)
        daemon_pid = int(pid_file.read_text())
        assert code == 0 and [e["reason"] for e in kinds(evs, "restart")] == ["hang"]
        assert not alive(daemon_pid)
    finally:
        if daemon_pid is None and pid_file.exists() and pid_file.read_text():  # watch() failed before it was read
            daemon_pid = int(pid_file.read_text())
        if daemon_pid is not None and alive(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)


def test_hang_timeout_zero_disables_hang_detection(tmp_path):
    """--hang_timeout 0: a run that never beats (and a startup timeout long past) is left to finish. (Its output
    folder exists already, as when a watchdog is started again on a run.)"""
    cmd = child_command(tmp_path, "time.sleep(0.5)\n")
    (tmp_path / "run").mkdir()
    code, evs, err = watch(tmp_path / "run", ["--hang_timeout", "0", "--startup_timeout", "0.1"], cmd)
    assert code == 0, err
    assert [e["event"] for e in evs] == ["start", "exit", "done"]


def test_progress_is_a_new_highest_step_and_resets_the_back_off(tmp_path):
    """Progress means an attempt beat a step above every earlier attempt's highest (not a higher first beat, not
    the same highest again). The first crash without progress waits the plain back-off; each back-off says why."""
    cmd = child_command(tmp_path, """
        for step in {1: [1, 3], 2: [2, 3], 3: [3, 4]}.get(attempt, [9]):
            hb.beat(step, "train")
            time.sleep(0.1)
        sys.exit(0 if attempt == 4 else 1)
    """)
    code, evs, err = watch(tmp_path / "run", ["--backoff", "0.05", "--max_backoff", "1", "--same_step_limit", "0"],
                           cmd, seconds=20)
    assert code == 0, err
    assert [e["progressed"] for e in kinds(evs, "restart")] == [True, False, True]
    assert [e["delay"] for e in kinds(evs, "backoff")] == [0.05, 0.1, 0.05]
    assert [e["reason"] for e in kinds(evs, "backoff")] == [
        "progress made: back-off reset", "2 failure(s) without progress", "progress made: back-off reset"]
    assert [(e["exit_code"], e["reason"]) for e in kinds(evs, "exit")] == [(1, "exited with code 1")] * 3 + [
        (0, "success")]
    assert "run exited with code 0 (last heartbeat step 9)" in err

    no_beat = child_command(tmp_path, "sys.exit(1)\n")
    code, evs, _ = watch(tmp_path / "run2", ["--backoff", "0.05", "--max_backoff", "1", "--max_restarts", "2"],
                         no_beat)
    assert code == 1 and [e["delay"] for e in kinds(evs, "backoff")] == [0.05, 0.1]
    assert [e["reason"] for e in kinds(evs, "backoff")] == ["1 failure(s) without progress",
                                                            "2 failure(s) without progress"]


def test_a_killed_run_is_said_killed_by_its_signal(tmp_path):
    cmd = child_command(tmp_path, "import signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    code, evs, err = watch(tmp_path / "run", ["--max_restarts", "0"], cmd)
    assert code == 1 and kinds(evs, "exit")[0]["reason"] == "killed by SIGKILL"
    assert "run killed by SIGKILL (last heartbeat step None)" in err


def test_a_same_step_limit_of_one_gives_up_at_the_first_death_at_a_step(tmp_path):
    cmd = child_command(tmp_path, 'hb.beat(4, "train")\ntime.sleep(0.1)\nsys.exit(1)\n')
    code, evs, _ = watch(tmp_path / "run", ["--same_step_limit", "1", "--max_restarts", "9"], cmd)
    assert code == 1 and len(kinds(evs, "start")) == 1
    assert evs[-1]["reason"] == "the run died 1 times in a row at step 4 (--same_step_limit 1)"


def test_zero_durations_are_accepted(tmp_path):
    with deadline(8.0), environ_as(watchdog_env()):
        assert main(["--output_dir", str(tmp_path / "run"), "--hang_timeout", "0", "--startup_timeout", "0",
                     "--window", "0", "--backoff", "0", "--max_backoff", "0", "--grace", "0", "--poll", "0.05",
                     "--", sys.executable, "-c", "pass"]) == 0


def test_a_stop_signal_event_names_the_last_heartbeat_step(tmp_path, monkeypatch):
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    (tmp_path / "heartbeat.json").write_text(json.dumps({"step": 7, "phase": "train", "time": 1.0}))
    dog = bare_dog(tmp_path, *FAST)
    assert dog._stop_on_signal(signal.SIGINT) == 130
    (event,) = events(tmp_path)
    assert (event["event"], event["step"], event["signal"], event["reason"]) == ("signal", 7, "SIGINT",
                                                                                 "received SIGINT")
