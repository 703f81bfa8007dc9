"""Shared helpers of the watchdog tests: fast options, the run's events, and an in-process watchdog under a SIGALRM
deadline (a broken watchdog fails its test in seconds instead of hanging it)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import psutil

from vqrl.watchdog import Watchdog, build_parser

FAST = ["--backoff", "0.05", "--max_backoff", "0.2", "--grace", "1", "--poll", "0.05",
        "--hang_timeout", "2", "--startup_timeout", "10", "--window", "600"]


def bare_dog(out: Path, *options: str, command=("true",)) -> Watchdog:
    """A Watchdog on output folder `out`, not started: for tests that drive its parts directly."""
    return Watchdog(build_parser().parse_args(["--output_dir", str(out), *options]), list(command),
                    stderr=io.StringIO())


def watchdog_env():
    env = dict(os.environ)
    env.pop("VQRL_HEARTBEAT", None)
    env.pop("OUTPUT", None)
    return env


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "watchdog.jsonl").read_text().splitlines()]


def attempts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "attempts.jsonl").read_text().splitlines()]


def kinds(evs, kind):
    return [e for e in evs if e["event"] == kind]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Deadline(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    def expire(signum, frame):
        raise Deadline(f"the watchdog did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class SignalledWatchdog(Watchdog):
    """A Watchdog that sends itself `sig` right after it writes the event `at` (a stop signal arriving then)."""

    def __init__(self, *args, at: str, sig: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.sig = at, sig

    def event(self, kind, message, **fields):
        super().event(kind, message, **fields)
        if kind == self.at:
            os.kill(os.getpid(), self.sig)  # handled by the watchdog's own handler, in this (the main) thread


def watch(out: Path, options: list[str], command: list[str], seconds: float = 8.0,
          signal_at: tuple[str, int] | None = None) -> tuple[int, list[dict], str]:
    """Run a Watchdog in this process; returns (exit code, events, what it printed). With signal_at=(event, sig),
    the watchdog receives `sig` right after it logs `event`."""
    opts = build_parser().parse_args(["--output_dir", str(out), *FAST, *options])
    err = io.StringIO()
    env = watchdog_env()
    with deadline(seconds), environ_as(env):
        if signal_at is None:
            code = Watchdog(opts, command, stderr=err).run()
        else:
            code = SignalledWatchdog(opts, command, stderr=err, at=signal_at[0], sig=signal_at[1]).run()
    return code, events(out), err.getvalue()


@contextlib.contextmanager
def environ_as(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def child_command(tmp_path: Path, body: str) -> list[str]:
    """A fake trainer: `body` runs with `out` (the output folder), `hb` (its heartbeat) and `attempt` defined."""
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent('''
        import os, subprocess, sys, time
        from vqrl.training.heartbeat import Heartbeat, heartbeat_path
        out = sys.argv[1]
        hb = Heartbeat(heartbeat_path(out), min_interval=0.0)
        attempt = int(os.environ["VQRL_WATCHDOG_ATTEMPT"])
    ''') + textwrap.dedent(body))
    return [sys.executable, str(path), str(tmp_path / "run")]


@contextlib.contextmanager
def self_pipe(dog: Watchdog):
    """The wake-up pipe a Watchdog opens in run(), for tests that call its stop sequence directly: non-blocking, as
    the real one, so a stray wake-up byte cannot block the drain in _sleep."""
    dog._rfd, dog._wfd = os.pipe()
    for fd in (dog._rfd, dog._wfd):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        yield dog
    finally:
        os.close(dog._rfd)
        os.close(dog._wfd)
