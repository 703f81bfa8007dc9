"""Fault-injection tests for the watchdog and the heartbeat file, with small fake trainers instead of the real one.

They must stay fast (tiny timeouts) and must leave no process behind.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vqrl.training.heartbeat import Heartbeat, heartbeat_path, read_heartbeat
from vqrl.watchdog import Watchdog, backoff_delay, build_parser, find_output_dir, resume_command, split_argv
from watchdog_utils import (FAST, alive, attempts, bare_dog, child_command, deadline, environ_as, events,
                            kinds, self_pipe, watch, watchdog_env)

REPO = Path(__file__).resolve().parents[1]

# A fake trainer: beats a heartbeat each step, persists progress so a restart resumes, and misbehaves on demand.
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time, argparse
    import psutil
    from vqrl.training.heartbeat import Heartbeat, heartbeat_path

    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--step_time", type=float, default=0.02)
    p.add_argument("--kill_at", default="")        # SIGKILL self at these steps, once each
    p.add_argument("--stop_at", type=int, default=-1)  # SIGSTOP self at this step, once
    p.add_argument("--fail_at", type=int, default=-1)  # exit 1 at this step, every time
    p.add_argument("--grandchild", action="store_true")  # spawn a `sleep` in our group every attempt
    p.add_argument("--forever", action="store_true")     # beat forever, record SIGTERM/SIGINT, ignore them
    p.add_argument("--resume", default=None)
    a = p.parse_args()

    out = a.output_dir
    state_path = os.path.join(out, "state.json")
    state = json.load(open(state_path)) if os.path.exists(state_path) else {"step": 0, "done": []}
    with open(os.path.join(out, "attempts.jsonl"), "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "resume_env": os.environ.get("VQRL_RESUME"),
                            "attempt_env": os.environ.get("VQRL_WATCHDOG_ATTEMPT"), "start_step": state["step"],
                            "old_grandchildren_alive": [
                                g for g in state.get("grandchildren", [])
                                if psutil.pid_exists(g) and psutil.Process(g).status() != psutil.STATUS_ZOMBIE],
                            }) + "\\n")

    def save():
        tmp = state_path + ".tmp"
        json.dump(state, open(tmp, "w"))
        os.replace(tmp, state_path)

    if a.grandchild:
        g = subprocess.Popen(["sleep", "1000"])
        state.setdefault("grandchildren", []).append(g.pid)
        save()
    if a.forever:
        def on_stop(signum, frame):  # record the forwarded signal, then ignore it: the watchdog must SIGKILL
            open(os.path.join(out, "got_" + signal.Signals(signum).name), "w").close()
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)

    hb = Heartbeat(heartbeat_path(out), min_interval=0.0)
    kill_at = {int(s) for s in a.kill_at.split(",") if s}
    while a.forever or state["step"] < a.steps:
        step = state["step"] + 1
        hb.beat(step, "train")
        time.sleep(a.step_time)
        key = f"{step}"
        if step in kill_at and key not in state["done"]:
            state["done"].append(key); save()
            os.kill(os.getpid(), signal.SIGKILL)
        if step == a.stop_at and "stop" not in state["done"]:
            state["done"].append("stop"); save()
            os.kill(os.getpid(), signal.SIGSTOP)
        if step == a.fail_at:
            sys.exit(1)
        state["step"] = step
        save()
    sys.exit(0)
    """
)



@pytest.fixture
def trainer(tmp_path):
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE_TRAINER)
    return path


def _watchdog_cmd(out: Path, options: list[str], command: list[str], entry=None) -> list[str]:
    entry = entry or ["-m", "vqrl.watchdog"]
    return [sys.executable, *entry, "--output_dir", str(out), *options, "--", *command]


def run_watchdog(out, options, command, timeout=15, entry=None):
    """The watchdog as a subprocess. Every run here takes 1-3 s; the timeout only bounds a broken watchdog."""
    return subprocess.run(_watchdog_cmd(out, options, command, entry), capture_output=True, text=True,
                          timeout=timeout, env=watchdog_env())




# ------------------------------------------------------------------------------------------------ heartbeat


def test_heartbeat_writes_json_and_rate_limits(tmp_path):
    path = tmp_path / "hb" / "heartbeat.json"
    hb = Heartbeat(path, min_interval=10.0)
    assert read_heartbeat(path) is None
    assert hb.beat(1, "train")
    first = read_heartbeat(path)
    assert {k: first[k] for k in ("step", "phase", "pid")} == {"step": 1, "phase": "train", "pid": os.getpid()}
    assert isinstance(first["time"], float)
    assert not hb.beat(1, "train")  # identical beat inside min_interval: skipped
    assert read_heartbeat(path) == first
    assert hb.beat(1, "save")  # phase change: always written
    assert hb.beat(2, "save")  # step change: always written
    assert read_heartbeat(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["heartbeat.json"]  # no temp files left


def test_read_heartbeat_never_raises_on_bad_files(tmp_path):
    path = tmp_path / "heartbeat.json"
    for content in ["", "{", "not json", "[1, 2]", '{"step": 1}', '{"step": "x", "time": 1.0}', "\x00\xff"]:
        path.write_text(content)
        assert read_heartbeat(path) is None, content
    path.write_bytes(b"\xff\xfe\x00")
    assert read_heartbeat(path) is None
    assert read_heartbeat(tmp_path / "missing.json") is None
    assert read_heartbeat(tmp_path) is None  # a directory


def test_heartbeat_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "heartbeat.json"
    hb = Heartbeat(path, min_interval=0.0)
    hb.beat(0, "train")
    stop, bad = threading.Event(), []

    def writer():
        step = 0
        while not stop.is_set():
            step += 1
            hb.beat(step, "train" * 50)  # a longer payload makes torn writes likelier if they could happen

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if read_heartbeat(path) is None:
                bad.append(1)
    finally:
        stop.set()
        thread.join()
    assert not bad


def test_heartbeat_phase_keeps_beating_then_stops(tmp_path):
    path = tmp_path / "heartbeat.json"
    hb = Heartbeat(path)
    with hb.phase("generate", 7, interval=0.05):
        t0 = read_heartbeat(path)["time"]
        time.sleep(0.3)
        during = read_heartbeat(path)
    assert during["phase"] == "generate" and during["step"] == 7 and during["time"] > t0
    assert "phase_started" in during
    after = read_heartbeat(path)
    time.sleep(0.15)
    assert read_heartbeat(path) == after  # the thread is gone with the block
    with hb.phase("save", 8, interval=0.05, max_seconds=0.1):  # a stuck phase stops beating after max_seconds
        time.sleep(0.3)
        frozen = read_heartbeat(path)
        time.sleep(0.15)
        assert read_heartbeat(path) == frozen


def test_heartbeat_survives_unwritable_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    hb = Heartbeat(blocker / "heartbeat.json")  # parent is a file: cannot write
    with pytest.warns(RuntimeWarning):
        assert hb.beat(1, "train") is False
    assert hb.beat(2, "train") is False  # warns once, never raises


def test_heartbeat_sweeps_old_temp_files(tmp_path):
    old, fresh = tmp_path / ".heartbeat.old.tmp", tmp_path / ".heartbeat.new.tmp"
    old.write_text("{")
    fresh.write_text("{")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    Heartbeat(tmp_path / "heartbeat.json")
    assert not old.exists() and fresh.exists()  # a temp file that young may be another writer's


def test_heartbeat_path_honours_watchdog_env(tmp_path, monkeypatch):
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)
    assert heartbeat_path(tmp_path) == str(tmp_path / "heartbeat.json")
    monkeypatch.setenv("VQRL_HEARTBEAT", "/elsewhere/hb.json")
    assert heartbeat_path(tmp_path) == "/elsewhere/hb.json"


# ------------------------------------------------------------------------------------------------ pure helpers


def test_helpers():
    assert split_argv(["--poll", "1", "--", "bash", "x.sh", "--", "y"]) == (["--poll", "1"], ["bash", "x.sh", "--", "y"])
    assert find_output_dir(["python", "t.py", "--output_dir", "o1"], {}) == "o1"
    assert find_output_dir(["python", "t.py", "--output_dir=o2"], {}) == "o2"
    assert find_output_dir(["bash", "run.sh"], {"OUTPUT": "o3"}) == "o3"
    assert find_output_dir(["bash", "run.sh"], {}) == os.getcwd()
    assert resume_command(["bash", "run.sh"]) == ["bash", "run.sh", "--resume", "auto"]
    assert resume_command(["t", "--resume", "ckpt-5"]) == ["t", "--resume", "ckpt-5"]
    assert resume_command(["t", "--resume=auto"]) == ["t", "--resume=auto"]
    assert resume_command(["bash", "run.sh"], add_arg=False) == ["bash", "run.sh"]
    assert [backoff_delay(n, 30, 600) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]
    assert split_argv(["--poll", "1"]) == (["--poll", "1"], [])  # no `--`: no command (main refuses that)


def test_a_signal_is_named_and_an_unknown_number_stays_a_number():
    from vqrl.watchdog import _signame

    assert _signame(signal.SIGTERM) == "SIGTERM" and _signame(10_000) == "10000"


@pytest.mark.parametrize("name", ["hang_timeout", "startup_timeout", "window", "backoff", "max_backoff", "grace"])
def test_a_negative_duration_is_refused_by_name(name, capsys, tmp_path, monkeypatch):
    from vqrl.watchdog import main

    monkeypatch.chdir(tmp_path)  # were it not refused, `true` would run with the current folder as output

    with pytest.raises(SystemExit) as exited:
        main([f"--{name}", "-1", "--", "true"])
    assert exited.value.code == 2 and f"--{name} must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--poll", "1"])  # no command after `--`
    assert exited.value.code == 2 and "give the command to supervise after `--`" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ fault injection


def test_sigkill_crashes_restart_resume_and_finish(tmp_path, trainer):
    out = tmp_path / "run"
    out.mkdir()
    res = run_watchdog(out, FAST, [sys.executable, str(trainer), "--output_dir", str(out), "--steps", "8",
                                   "--kill_at", "2,4,6"])
    assert res.returncode == 0, res.stderr
    evs, atts = events(out), attempts(out)
    assert len(kinds(evs, "start")) == 4 and len(atts) == 4
    assert [e["exit_code"] for e in kinds(evs, "exit")] == [-9, -9, -9, 0]
    assert [e["step"] for e in kinds(evs, "exit")] == [2, 4, 6, 8]
    assert kinds(evs, "done") and evs[-1]["event"] == "done"
    # every restart made progress, so the back-off stays at its initial value
    assert [e["delay"] for e in kinds(evs, "backoff")] == [0.05, 0.05, 0.05]
    assert atts[0]["resume_env"] is None and "--resume" not in atts[0]["argv"]
    for a in atts[1:]:
        assert a["resume_env"] == "auto" and a["argv"][-2:] == ["--resume", "auto"]
    assert [a["attempt_env"] for a in atts] == ["1", "2", "3", "4"]
    assert [a["start_step"] for a in atts] == [0, 1, 3, 5]
    assert json.loads((out / "state.json").read_text())["step"] == 8
    assert "[watchdog]" in res.stderr and "killed by SIGKILL" in res.stderr
    for e in evs:
        assert {"time", "event", "attempt", "pid", "step", "exit_code", "reason"} <= set(e)


def test_no_process_of_the_old_group_survives_a_restart(tmp_path, trainer):
    out = tmp_path / "run"
    out.mkdir()
    res = run_watchdog(out, FAST, [sys.executable, str(trainer), "--output_dir", str(out), "--steps", "4",
                                   "--kill_at", "2", "--grandchild"])
    assert res.returncode == 0, res.stderr
    atts = attempts(out)
    assert len(atts) == 2
    assert atts[1]["old_grandchildren_alive"] == []  # checked by the new attempt as it started
    grandchildren = json.loads((out / "state.json").read_text())["grandchildren"]
    assert len(grandchildren) == 2
    assert not any(alive(g) for g in grandchildren)  # the one left after success was cleaned up too
    kills = kinds(events(out), "kill")
    assert [k["reason"] for k in kills] == ["cleanup after exit", "cleanup after exit"]


def test_sigstop_hang_is_detected_killed_and_resumed(tmp_path, trainer):
    out = tmp_path / "run"
    out.mkdir()
    t0 = time.monotonic()
    res = run_watchdog(out, [*FAST, "--hang_timeout", "1"],
                       [sys.executable, str(trainer), "--output_dir", str(out), "--steps", "5", "--stop_at", "3"])
    assert res.returncode == 0, res.stderr
    evs = events(out)
    hangs = kinds(evs, "hang")
    assert len(hangs) == 1 and hangs[0]["step"] == 3 and 1.0 <= hangs[0]["age"] < 3.0
    assert kinds(evs, "kill")[0]["signal"] == "SIGTERM"
    assert kinds(evs, "exit")[0]["exit_code"] == -signal.SIGTERM  # SIGCONT let the frozen run act on SIGTERM
    assert len(kinds(evs, "start")) == 2 and evs[-1]["event"] == "done"
    assert attempts(out)[1]["start_step"] == 2
    assert time.monotonic() - t0 < 15


def test_no_first_heartbeat_within_startup_timeout(tmp_path):
    out = tmp_path / "run"
    res = run_watchdog(out, [*FAST, "--startup_timeout", "0.5", "--max_restarts", "0", "--grace", "0.3"],
                       [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                              "time.sleep(100)"])
    assert res.returncode == 1
    evs = events(out)
    assert "no heartbeat" in kinds(evs, "hang")[0]["reason"]
    assert [k["signal"] for k in kinds(evs, "kill")] == ["SIGTERM", "SIGKILL"]  # SIGTERM ignored: SIGKILL after grace
    assert kinds(evs, "exit")[0]["exit_code"] == -signal.SIGKILL
    assert "--max_restarts 0" in kinds(evs, "give_up")[0]["reason"]


def test_always_failing_command_gives_up_after_max_restarts(tmp_path):
    out = tmp_path / "run"
    res = run_watchdog(out, [*FAST, "--max_restarts", "3"], [sys.executable, "-c", "import sys; sys.exit(3)"])
    assert res.returncode == 1
    evs = events(out)
    assert len(kinds(evs, "start")) == 4
    assert [e["exit_code"] for e in kinds(evs, "exit")] == [3, 3, 3, 3]
    assert [e["delay"] for e in kinds(evs, "backoff")] == [0.05, 0.1, 0.2]  # doubling, capped at --max_backoff
    give_up = evs[-1]
    assert give_up["event"] == "give_up" and give_up["exit_code"] == 3 and "--max_restarts 3" in give_up["reason"]
    assert "giving up" in res.stderr and "restarts within the last" in res.stderr


def test_dying_at_the_same_step_gives_up(tmp_path, trainer):
    out = tmp_path / "run"
    out.mkdir()
    res = run_watchdog(out, [*FAST, "--same_step_limit", "3"],
                       [sys.executable, str(trainer), "--output_dir", str(out), "--steps", "9", "--fail_at", "3"])
    assert res.returncode == 1
    evs = events(out)
    assert len(kinds(evs, "start")) == 3
    assert [e["step"] for e in kinds(evs, "exit")] == [3, 3, 3]
    assert "3 times in a row at step 3" in evs[-1]["reason"]
    assert "same_step_limit" in res.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_is_forwarded_and_ends_without_restart(tmp_path, trainer, sig, code):
    out = tmp_path / "run"
    out.mkdir()
    cmd = _watchdog_cmd(out, [*FAST, "--grace", "0.5"],
                        [sys.executable, str(trainer), "--output_dir", str(out), "--forever", "--grandchild"])
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=watchdog_env())
    try:
        deadline = time.monotonic() + 10
        while (read_heartbeat(out / "heartbeat.json") or {}).get("step", 0) < 2:
            assert time.monotonic() < deadline, "fake trainer never beat"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    evs = events(out)
    assert len(kinds(evs, "start")) == 1 and not kinds(evs, "restart")
    assert kinds(evs, "signal")[0]["signal"] == sig.name
    assert [k["signal"] for k in kinds(evs, "kill")] == [sig.name, "SIGKILL"]  # the trainer ignores it: SIGKILL
    assert (out / f"got_{sig.name}").exists()  # forwarded to the run
    grandchildren = json.loads((out / "state.json").read_text())["grandchildren"]
    assert not any(alive(g) for g in grandchildren)
    assert f"received {sig.name}" in err


def test_top_level_shim_and_exit_zero(tmp_path):
    out = tmp_path / "run"
    res = run_watchdog(out, FAST, [sys.executable, "-c", "print('hi')"], entry=[str(REPO / "watchdog.py")])
    assert res.returncode == 0, res.stderr
    assert [e["event"] for e in events(out)] == ["start", "exit", "done"]


def test_command_that_cannot_start(tmp_path):
    out = tmp_path / "run"
    res = run_watchdog(out, FAST, [str(tmp_path / "no-such-program")])
    assert res.returncode == 127
    assert events(out)[-1]["reason"] == "cannot start"


def test_missing_command_is_a_usage_error(tmp_path):
    res = run_watchdog(tmp_path, FAST, [])
    assert res.returncode == 2 and "after `--`" in res.stderr


# ------------------------------------------------------------------------------------------------ configuration errors

CONFIG_ERROR_CHILD = textwrap.dedent(
    """
    import os, sys
    from vqrl.training.heartbeat import report_config_error
    with open(os.path.join(sys.argv[1], "attempts.jsonl"), "a") as f:
        f.write("{}\\n")
    if sys.argv[2] == "heartbeat":  # what vqrl.grpo does under a launcher that turns exit 2 into 1
        report_config_error("configuration error: --trainer foo: unknown trainer")
        sys.exit(1)
    print("vqrl: configuration error: --max_pixels -5: must be positive", file=sys.stderr)
    sys.exit(2)
    """
)


@pytest.mark.parametrize("how, code", [("exit2", 2), ("heartbeat", 1)])
def test_a_configuration_error_is_never_retried(tmp_path, how, code):
    out = tmp_path / "run"
    out.mkdir()
    child = tmp_path / "child.py"
    child.write_text(CONFIG_ERROR_CHILD)
    t0 = time.monotonic()
    res = run_watchdog(out, [*FAST, "--backoff", "5", "--max_restarts", "10"],
                       [sys.executable, str(child), str(out), how], timeout=20)
    assert res.returncode == 2, res.stderr
    assert time.monotonic() - t0 < 10  # no back-off: a 5 s wait would already show
    assert len(attempts(out)) == 1
    evs = events(out)
    assert [e["event"] for e in evs] == ["start", "exit", "give_up"]
    give_up = evs[-1]
    assert give_up["exit_code"] == code and give_up["watchdog_exit"] == 2
    assert "configuration error" in give_up["reason"]
    if how == "heartbeat":
        assert "--trainer foo: unknown trainer" in give_up["reason"]
    assert "giving up" in res.stderr and "configuration error" in res.stderr


def test_a_stale_configuration_error_heartbeat_does_not_stop_restarts(tmp_path):
    """Only this attempt's heartbeat counts: one left by an earlier run must not turn a crash into a give-up."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "heartbeat.json").write_text(json.dumps({"step": None, "phase": "config_error", "reason": "old",
                                                    "time": time.time(), "pid": 1}))
    res = run_watchdog(out, [*FAST, "--max_restarts", "2"], [sys.executable, "-c", "import sys; sys.exit(1)"],
                       timeout=20)
    assert res.returncode == 1
    evs = events(out)
    assert len(kinds(evs, "start")) == 3 and "--max_restarts 2" in evs[-1]["reason"]


# ------------------------------------------------------------------------------------------------ in-process, bounded
# The watchdog's rules driven in this process, each under a hard deadline (SIGALRM), so a broken rule fails in
# seconds instead of waiting out a subprocess timeout.




def test_inprocess_a_live_run_that_stops_beating_is_killed_as_hung(tmp_path):
    cmd = child_command(tmp_path, """
        hb.beat(1, "train")
        time.sleep(60)  # alive, silent
    """)
    t0 = time.monotonic()
    code, evs, err = watch(tmp_path / "run", ["--hang_timeout", "0.6", "--max_restarts", "0"], cmd)
    assert code == 1
    assert [e["event"] for e in evs] == ["start", "hang", "kill", "exit", "give_up"]
    assert 0.6 <= kinds(evs, "hang")[0]["age"] < 2.0 and kinds(evs, "hang")[0]["step"] == 1
    assert kinds(evs, "exit")[0]["exit_code"] == -signal.SIGTERM
    assert time.monotonic() - t0 < 5


def test_inprocess_progress_resets_the_backoff_and_no_progress_doubles_it(tmp_path):
    # attempts 1-3 each reach a new step then crash; attempts 4-6 crash at once (no progress); 7 succeeds
    cmd = child_command(tmp_path, """
        if attempt <= 3:
            hb.beat(attempt, "train")
            time.sleep(0.1)
            sys.exit(1)
        if attempt <= 6:
            sys.exit(1)
        hb.beat(9, "train")
    """)
    code, evs, err = watch(tmp_path / "run", ["--backoff", "0.05", "--max_backoff", "1", "--same_step_limit", "0"], cmd)
    assert code == 0, err
    assert [e["delay"] for e in kinds(evs, "backoff")] == [0.05, 0.05, 0.05, 0.1, 0.2, 0.4]
    assert [e["progressed"] for e in kinds(evs, "restart")] == [True, True, True, False, False, False]


def test_inprocess_give_up_rules(tmp_path):
    crash = child_command(tmp_path, "sys.exit(5)\n")
    code, evs, err = watch(tmp_path / "run", ["--max_restarts", "2"], crash)
    assert code == 1 and len(kinds(evs, "start")) == 3 and "--max_restarts 2" in evs[-1]["reason"]

    same_step = child_command(tmp_path, """
        hb.beat(4, "train")
        time.sleep(0.1)
        sys.exit(1)
    """)
    code, evs, err = watch(tmp_path / "run2", ["--same_step_limit", "2", "--max_restarts", "9"], same_step)
    assert code == 1 and len(kinds(evs, "start")) == 2 and "2 times in a row at step 4" in evs[-1]["reason"]

    config = child_command(tmp_path, "sys.exit(2)\n")
    code, evs, err = watch(tmp_path / "run3", ["--max_restarts", "9"], config)
    assert code == 2 and len(kinds(evs, "start")) == 1 and "configuration error" in evs[-1]["reason"]


def test_inprocess_the_whole_process_group_goes_even_after_success(tmp_path):
    cmd = child_command(tmp_path, """
        g = subprocess.Popen(["sleep", "60"])  # left behind in the run's group
        open(os.path.join(out, "grandchild"), "w").write(str(g.pid))
        hb.beat(1, "train")
    """)
    code, evs, err = watch(tmp_path / "run", [], cmd)
    assert code == 0
    assert not alive(int((tmp_path / "run" / "grandchild").read_text()))
    assert [k["reason"] for k in kinds(evs, "kill")] == ["cleanup after exit"]


def test_inprocess_the_previous_signal_handlers_are_restored(tmp_path):
    """`watchdog.main()` called from Python (a launcher, a notebook) leaves the caller's handlers as they were."""
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)

    def mine(signum, frame):
        pass

    before = {sig: signal.signal(sig, mine) for sig in watched}
    try:
        code, evs, err = watch(tmp_path / "run", [], child_command(tmp_path, 'hb.beat(1, "train")\n'))
        assert code == 0, err
        assert {sig: signal.getsignal(sig) for sig in watched} == {sig: mine for sig in watched}
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("at", ["exit", "backoff"])
def test_inprocess_a_stop_signal_after_a_crash_ends_the_watch_without_a_restart(tmp_path, at):
    """SIGTERM arriving while the crashed run's processes are cleaned up (after its `exit` event), or during the
    back-off before a restart, ends the watch with 143 and starts nothing more."""
    crash = child_command(tmp_path, """
        hb.beat(1, "train")
        time.sleep(0.1)
        sys.exit(1)
    """)
    code, evs, err = watch(tmp_path / "run", ["--backoff", "30", "--max_restarts", "5"], crash,
                           signal_at=(at, signal.SIGTERM))
    assert code == 143, err
    assert len(kinds(evs, "start")) == 1 and bool(kinds(evs, "restart")) == (at == "backoff")  # logged before it
    assert evs[-1]["event"] == "signal" and evs[-1]["signal"] == "SIGTERM" and evs[-1]["watchdog_exit"] == 143


def test_reaping_a_dead_leader_gives_its_exit_code(tmp_path):
    """A run leader that died after the survivors check but is not reaped yet (a zombie) is reaped, so the `exit`
    event of a killed hung run carries its code rather than None."""
    dog = bare_dog(tmp_path, *FAST)
    assert dog._reap()  # no run yet: nothing to reap
    dog.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    os.waitid(os.P_PID, dog.proc.pid, os.WEXITED | os.WNOWAIT)  # dead, and left a zombie
    assert dog.proc.returncode is None
    assert dog._reap() and dog.proc.returncode == 3


def test_inprocess_a_restart_says_how_it_resumes(tmp_path):
    crash = child_command(tmp_path, "sys.exit(5)\n")
    code, _, err = watch(tmp_path / "run", ["--max_restarts", "1"], crash)
    assert code == 1 and "restarts within 600 s; --resume auto, VQRL_RESUME=auto)" in err
    code, _, err = watch(tmp_path / "run2", ["--max_restarts", "1", "--no_resume_arg"], crash)
    assert code == 1 and "restarts within 600 s; resume via env, VQRL_RESUME=auto)" in err


def test_inprocess_each_restart_names_the_attempt_that_follows_it(tmp_path):
    """A restart event's next_attempt is the attempt number the next start carries (what a reader of
    watchdog.jsonl joins on), and attempts count up from 1 by one."""
    code, evs, _ = watch(tmp_path / "run", ["--max_restarts", "2"], child_command(tmp_path, "sys.exit(5)\n"))
    starts, restarts = kinds(evs, "start"), kinds(evs, "restart")
    assert code == 1 and [e["attempt"] for e in starts] == [1, 2, 3]
    assert [e["next_attempt"] for e in restarts] == [2, 3]
    assert [e["attempt"] for e in restarts] == [1, 2]


def test_inprocess_restarts_older_than_the_window_no_longer_count(tmp_path):
    """--max_restarts counts restarts within the last --window seconds: a run that crashes now and then, each
    crash after the earlier restarts left the window, is restarted every time (here 3 times with a limit of 1)."""
    crash = child_command(tmp_path, "time.sleep(0.3)\nsys.exit(5 if attempt < 4 else 0)\n")
    code, evs, _ = watch(tmp_path / "run", ["--max_restarts", "1", "--window", "0.2"], crash, seconds=15)
    assert code == 0 and [e["restarts_in_window"] for e in kinds(evs, "restart")] == [1, 1, 1]
    code, evs, _ = watch(tmp_path / "run2", ["--max_restarts", "1", "--window", "600"], crash, seconds=15)
    assert code == 1 and len(kinds(evs, "restart")) == 1 and len(kinds(evs, "give_up")) == 1


def test_inprocess_a_descendant_that_left_the_process_group_is_stopped_too(tmp_path):
    """A hung run's descendant that started its own session (setsid: a server, a daemonised worker), a child of the
    run or deeper down, does not get the process-group signal; the watchdog tracks all of the run's descendants and
    signals them itself, so no process of the old run outlives the restart."""
    child_pid, grandchild_pid = tmp_path / "child.pid", tmp_path / "grandchild.pid"
    sleeper = "import time; time.sleep(60)"
    inner = (f"import subprocess, sys, time; q = subprocess.Popen([sys.executable, '-c', {sleeper!r}], "
             f"start_new_session=True); open({str(grandchild_pid)!r}, 'w').write(str(q.pid)); time.sleep(60)")
    body = f"""
        if attempt == 1:
            p = subprocess.Popen([sys.executable, "-c", {sleeper!r}], start_new_session=True)
            open({str(child_pid)!r}, "w").write(str(p.pid))
            subprocess.Popen([sys.executable, "-c", {inner!r}])  # stays in the group; its child leaves it
            while not os.path.exists({str(grandchild_pid)!r}):
                time.sleep(0.02)
            time.sleep(0.3)  # the watchdog polls every 0.05 s: it has seen them
            hb.beat(1, "train")
            time.sleep(60)  # hangs: no more beats
    """
    escaped = []
    try:
        code, evs, _ = watch(tmp_path / "run", [], child_command(tmp_path, body), seconds=20)
        escaped = [int(child_pid.read_text()), int(grandchild_pid.read_text())]
        assert code == 0 and [e["reason"] for e in kinds(evs, "restart")] == ["hang"]
        assert [alive(pid) for pid in escaped] == [False, False]
    finally:
        for pid in escaped:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_inprocess_a_successful_run_is_done_with_exit_0(tmp_path):
    code, evs, err = watch(tmp_path / "run", [], child_command(tmp_path, 'hb.beat(2, "train")\n'))
    (done,) = kinds(evs, "done")
    assert code == 0 and done["exit_code"] == 0 and done["watchdog_exit"] == 0 and done["reason"] == "success"
    assert evs[-1] is done and "run completed successfully" in err


def test_inprocess_a_hang_names_the_step_and_the_phase_it_hung_in(tmp_path):
    """Where a run hung is the first thing an operator needs: the hang event carries the last heartbeat's step and
    phase (here a generation that never returns)."""
    body = """
        if attempt == 1:
            hb.beat(3, "generate")
            time.sleep(60)
    """
    code, evs, err = watch(tmp_path / "run", [], child_command(tmp_path, body), seconds=15)
    (hang,) = kinds(evs, "hang")
    assert code == 0 and hang["step"] == 3 and hang["phase"] == "generate"
    assert "at step 3, phase 'generate'" in err


def test_inprocess_each_restart_waits_its_backoff(tmp_path):
    """A crashed run is restarted only after the back-off delay (here 0.6 s), so a crash loop does not hammer the
    node or the shared filesystem."""
    crash = child_command(tmp_path, "sys.exit(5 if attempt == 1 else 0)\n")
    code, evs, _ = watch(tmp_path / "run", ["--backoff", "0.6", "--max_backoff", "0.6"], crash, seconds=15)
    (backoff,) = kinds(evs, "backoff")
    second_start = kinds(evs, "start")[1]
    assert code == 0 and backoff["delay"] == 0.6 and second_start["time"] - backoff["time"] >= 0.55


class FlushRecorder(io.StringIO):
    """A stderr that remembers what had been flushed (a redirected stderr is block-buffered)."""

    flushed = ""

    def flush(self):
        self.flushed = self.getvalue()


def test_each_line_reaches_stderr_at_once_even_when_the_log_cannot_be_written(tmp_path):
    """The watchdog's own lines are flushed as they are printed (a `tail -f` of a redirected log sees them), and an
    event log it cannot append to is said on stderr, not raised."""
    out = tmp_path / "run"
    (out / "watchdog.jsonl").mkdir(parents=True)  # cannot be appended to
    opts = build_parser().parse_args(["--output_dir", str(out), *FAST])
    err = FlushRecorder()
    Watchdog(opts, ["true"], stderr=err).event("start", "started")
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and "cannot append to" in lines[0] and lines[1].endswith("attempt 0: started")
    assert err.flushed == err.getvalue()


def test_a_watchdog_run_from_another_thread_polls_without_signal_handlers(tmp_path):
    """Signal handlers can only be set in the main thread: from another one the watchdog still supervises the run
    (by polling) and ends normally."""
    opts = build_parser().parse_args(["--output_dir", str(tmp_path / "run"), *FAST])
    cmd = child_command(tmp_path, 'hb.beat(1, "train")\n')
    result = {}

    def target():
        with environ_as(watchdog_env()):
            result["code"] = Watchdog(opts, cmd, stderr=io.StringIO()).run()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert result == {"code": 0}
    assert [e["event"] for e in events(tmp_path / "run")][-1] == "done"


def test_sigkill_is_repeated_at_a_pace_not_in_a_busy_loop(tmp_path, monkeypatch):
    """A process that takes a while to go after SIGKILL (in the kernel, flushing to a slow disk) is signalled again
    every 50 ms until it is gone: the watchdog does not spin a core of the node it shares with the run."""
    dog = bare_dog(tmp_path, *FAST, "--grace", "0.1")
    dog.proc = SimpleNamespace(pid=4242, returncode=-signal.SIGKILL)
    gone_at = time.monotonic() + 0.5
    sent = []
    monkeypatch.setattr(dog, "_track_descendants", lambda: None)
    monkeypatch.setattr(dog, "_survivors", lambda pgid: [4242] if time.monotonic() < gone_at else [])
    monkeypatch.setattr(dog, "_signal_run", lambda pgid, sig: sent.append(sig))
    with self_pipe(dog):
        assert dog.stop_run("test") is True
    assert sent[:2] == [signal.SIGTERM, signal.SIGCONT]
    assert 3 <= sent.count(signal.SIGKILL) <= 20  # ~0.4 s of SIGKILL rounds, 50 ms apart


def test_the_grace_period_is_waited_at_a_pace_not_in_a_busy_loop(tmp_path, monkeypatch):
    """While a run has --grace seconds to exit after SIGTERM, the watchdog checks every 50 ms or so, sleeping in
    between: it does not spin a core of the node it shares with the run."""
    dog = bare_dog(tmp_path, *FAST, "--grace", "0.3")
    dog.proc = SimpleNamespace(pid=4242, returncode=-signal.SIGTERM)
    gone_at = time.monotonic() + 0.25  # exits within the grace period
    naps, real_sleep = [], dog._sleep
    monkeypatch.setattr(dog, "_track_descendants", lambda: None)
    monkeypatch.setattr(dog, "_survivors", lambda pgid: [4242] if time.monotonic() < gone_at else [])
    monkeypatch.setattr(dog, "_signal_run", lambda pgid, sig: None)
    monkeypatch.setattr(dog, "_sleep", lambda seconds, *handled: (naps.append(seconds), real_sleep(seconds, *handled)))
    with self_pipe(dog):
        assert dog.stop_run("test") is True
    assert 2 <= len(naps) <= 12 and all(0 < nap <= 0.05 for nap in naps), naps


def test_zero_restarts_and_no_same_step_limit_are_allowed_a_zero_poll_is_not(tmp_path, capsys):
    from vqrl.watchdog import main

    with deadline(8.0), environ_as(watchdog_env()):
        assert main(["--output_dir", str(tmp_path / "run"), *FAST, "--max_restarts", "0", "--same_step_limit", "0",
                     "--", sys.executable, "-c", "pass"]) == 0
    with pytest.raises(SystemExit) as exited:
        main(["--output_dir", str(tmp_path / "run2"), "--poll", "0", "--", "true"])
    assert exited.value.code == 2 and "--poll must be > 0" in capsys.readouterr().err


def test_the_documented_defaults_are_the_watchdogs():
    """docs/watchdog.md's option table is what an operator tunes from: each default it states is the parser's."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "watchdog.md").read_text()
    rows = re.findall(r"^\| `--(\w+) [A-Z]+` \| ([\d.]+) \|", doc, flags=re.M)
    defaults = vars(build_parser().parse_args([]))
    assert {name for name, _ in rows} == {"hang_timeout", "startup_timeout", "max_restarts", "window",
                                          "same_step_limit", "backoff", "max_backoff", "grace", "poll"}
    assert {name: float(value) for name, value in rows} == {name: float(defaults[name]) for name, _ in rows}
