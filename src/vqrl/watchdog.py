"""Watchdog: run a training command, restart it (resuming) when it crashes or its heartbeat goes stale, give up sanely.

It supervises processes only: no torch, no trainer imports, no checkpoint picking (`--resume auto` does that).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

from vqrl.training.heartbeat import (CONFIG_ERROR_PHASE, EXIT_CONFIG_ERROR, HEARTBEAT_ENV, HEARTBEAT_FILENAME,
                                     read_heartbeat)

try:  # accelerate depends on psutil, so it is normally present; without it we fall back to killpg(pgid, 0)
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

LOG_FILENAME = "watchdog.jsonl"
RESUME_ENV = "VQRL_RESUME"
ATTEMPT_ENV = "VQRL_WATCHDOG_ATTEMPT"
EXIT_GAVE_UP = 1
EXIT_CANNOT_START = 127
STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
USAGE = "python watchdog.py [options] -- <command ...>   (or: vqrl watchdog [options] -- <command ...>)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="watchdog",
        usage=USAGE,
        description="Run a command in its own process group; restart it (with --resume auto) when it exits "
        "non-zero or its heartbeat goes stale; give up after too many restarts. See docs/watchdog.md.",
    )
    p.add_argument("--output_dir", default=None,
                   help="where watchdog.jsonl and heartbeat.json live (default: the command's --output_dir, "
                        "else $OUTPUT, else the current directory)")
    p.add_argument("--hang_timeout", type=float, default=1800.0,
                   help="seconds without a new heartbeat before the run counts as hung (0 disables hang detection)")
    p.add_argument("--startup_timeout", type=float, default=3600.0,
                   help="seconds allowed before an attempt writes its first heartbeat")
    p.add_argument("--max_restarts", type=int, default=10, help="give up after this many restarts within --window")
    p.add_argument("--window", type=float, default=86400.0, help="seconds over which restarts are counted")
    p.add_argument("--same_step_limit", type=int, default=3,
                   help="give up when the run dies this many times in a row at the same heartbeat step (0: never)")
    p.add_argument("--backoff", type=float, default=30.0, help="first delay before a restart, in seconds")
    p.add_argument("--max_backoff", type=float, default=600.0, help="cap of the doubling restart delay")
    p.add_argument("--grace", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL to the run's group")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between heartbeat checks")
    p.add_argument("--no_resume_arg", action="store_true",
                   help="on restart only set VQRL_RESUME=auto; do not append `--resume auto` to the command")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Watchdog options before the first `--`, the supervised command after it."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def find_output_dir(command: list[str], environ: dict | None = None) -> str:
    """The command's --output_dir (either spelling), else $OUTPUT (the seed's launch scripts), else cwd."""
    environ = os.environ if environ is None else environ
    for i, arg in enumerate(command):
        for flag in ("--output_dir", "--output-dir"):
            if arg == flag and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return environ.get("OUTPUT") or os.getcwd()


def resume_command(command: list[str], add_arg: bool = True) -> list[str]:
    """The command for a restart: `--resume auto` appended unless the user already chose a --resume."""
    if not add_arg or any(a == "--resume" or a.startswith("--resume=") for a in command):
        return list(command)
    return [*command, "--resume", "auto"]


def backoff_delay(streak: int, initial: float, cap: float) -> float:
    """Delay before a restart: initial * 2**(streak-1), capped; streak counts failures without progress."""
    return min(cap, initial * 2 ** max(0, streak - 1))


def config_error(code: int | None, heartbeat: dict | None) -> str | None:
    """Why the ended attempt failed on its configuration (never worth a retry), or None.

    Exit code 2 is vqrl's (and Python's and argparse's) "fix the command"; through a launcher that rewrites exit
    codes (accelerate, torchrun: 1) the trainer's last heartbeat of this attempt says so instead.
    """
    if heartbeat is not None and heartbeat.get("phase") == CONFIG_ERROR_PHASE:
        return "; ".join(str(heartbeat.get("reason") or "configuration error").splitlines())[:1000]
    if code == EXIT_CONFIG_ERROR:
        return f"exit code {EXIT_CONFIG_ERROR} (a configuration or usage error; its message is on the run's stderr)"
    return None


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


class Watchdog:
    """One supervised command: the attempt loop, the stop sequence and the event log."""

    def __init__(self, opts: argparse.Namespace, command: list[str], stderr=None):
        self.opts = opts
        self.command = command
        self.stderr = stderr or sys.stderr
        self.output_dir = os.path.abspath(opts.output_dir or find_output_dir(command))
        self.log_path = os.path.join(self.output_dir, LOG_FILENAME)
        self.hb_path = os.environ.get(HEARTBEAT_ENV) or os.path.join(self.output_dir, HEARTBEAT_FILENAME)
        self.attempt = 0
        self.proc: subprocess.Popen | None = None
        self.tracked: dict[int, float] = {}  # descendants seen this attempt: pid -> create_time (pid reuse guard)
        self.pending: collections.deque[int] = collections.deque()  # stop signals received, oldest first
        self._rfd = self._wfd = -1

    # ---------------------------------------------------------------- events

    def event(self, kind: str, message: str, **fields) -> None:
        """One JSON line in watchdog.jsonl and one readable line on stderr."""
        now = time.time()
        record = {"time": round(now, 3), "event": kind, "attempt": self.attempt,
                  "pid": self.proc.pid if self.proc else None, "step": None, "exit_code": None, "reason": None}
        record.update(fields)
        try:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            print(f"[watchdog] cannot append to {self.log_path}: {exc}", file=self.stderr, flush=True)
        stamp = datetime.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S")
        print(f"[watchdog] {stamp} attempt {self.attempt}: {message}", file=self.stderr, flush=True)

    # ---------------------------------------------------------------- signals and sleeping

    def _install_signals(self) -> dict:
        """Stop signals and SIGCHLD write a byte to a self-pipe, so a sleep ends at once when one arrives."""
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        if threading.current_thread() is not threading.main_thread():
            return {}  # signal handlers can only be set from the main thread; polling still works

        def on_stop(signum, _frame):
            self.pending.append(signum)
            self._wake()

        def on_child(_signum, _frame):
            self._wake()

        previous = {sig: signal.signal(sig, on_stop) for sig in STOP_SIGNALS}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, on_child)
        return previous

    def _wake(self) -> None:
        try:
            os.write(self._wfd, b"x")
        except OSError:  # pipe full: a wake-up is already pending
            pass

    def _restore_signals(self, previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for fd in (self._rfd, self._wfd):
            os.close(fd)

    def _sleep(self, seconds: float, handled: int = 0) -> None:
        """Sleep up to `seconds`; return early when a signal (stop or child exit) arrives. `handled`: stop signals
        already being acted on, which must not cut the naps short (a grace period after Ctrl-C would be a busy loop
        rescanning every process of the node)."""
        if len(self.pending) > handled or seconds <= 0:
            return
        ready, _, _ = select.select([self._rfd], [], [], seconds)
        if ready:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except BlockingIOError:
                pass

    # ---------------------------------------------------------------- process group

    def _track_descendants(self) -> None:
        """Remember the run's descendants, so even one that left the process group (setsid) is stopped too."""
        if psutil is None or self.proc is None:
            return
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.tracked.setdefault(child.pid, child.create_time())
        except (psutil.Error, OSError):
            pass

    def _survivors(self, pgid: int) -> list[int]:
        """Live (non-zombie) processes of the run: members of its group plus tracked descendants."""
        if self.proc is not None:
            self.proc.poll()  # reap the leader, else its zombie keeps the group "alive"
        if psutil is None:  # pragma: no cover
            try:
                os.killpg(pgid, 0)
                return [pgid]
            except ProcessLookupError:
                return []
            except PermissionError:
                return [pgid]
        alive = []
        for p in psutil.process_iter(["pid", "status", "create_time"]):
            try:
                if p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                pid = p.info["pid"]
                tracked = self.tracked.get(pid)
                if (tracked is not None and abs(tracked - p.info["create_time"]) < 1e-3) or os.getpgid(pid) == pgid:
                    alive.append(pid)
            except (psutil.Error, OSError):
                continue
        return alive

    def _signal_run(self, pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in self._survivors(pgid):
            try:
                if os.getpgid(pid) != pgid:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_run(self, reason: str, sig: int = signal.SIGTERM) -> bool:
        """Send `sig` to the whole run, SIGKILL what remains after --grace, and wait until nothing remains.

        Returns False only when processes survive SIGKILL for long (stuck in the kernel): restarting onto
        GPUs they still hold would fail, so the caller gives up instead.
        """
        assert self.proc is not None
        pgid = self.proc.pid
        self._track_descendants()
        if not self._survivors(pgid):
            return self._reap()
        self.event("kill", f"sending {_signame(sig)} to the run's process group {pgid} ({reason})",
                   signal=_signame(sig), pgid=pgid, reason=reason)
        self._signal_run(pgid, sig)
        self._signal_run(pgid, signal.SIGCONT)  # a SIGSTOPped process only acts on SIGTERM once continued
        handled = len(self.pending)
        deadline = time.monotonic() + self.opts.grace
        while time.monotonic() < deadline and self._survivors(pgid):
            if len(self.pending) > handled:  # a second Ctrl-C: do not wait out the grace period
                break
            self._sleep(min(0.05, max(0.0, deadline - time.monotonic())), handled)
        survivors = self._survivors(pgid)
        if not survivors:
            return self._reap()
        self.event("kill", f"{len(survivors)} process(es) still alive after {_signame(sig)}; sending SIGKILL",
                   signal="SIGKILL", pgid=pgid, survivors=survivors, reason=reason)
        patience = max(60.0, 2 * self.opts.grace)
        deadline = time.monotonic() + patience
        while survivors and time.monotonic() < deadline:
            self._signal_run(pgid, signal.SIGKILL)
            self._sleep(0.05, len(self.pending))  # no signal changes these rounds: always nap between them
            survivors = self._survivors(pgid)
        if survivors:
            self.event("kill", f"processes {survivors} survived SIGKILL for {patience:.0f} s",
                       signal="SIGKILL", pgid=pgid, survivors=survivors, reason="unkillable")
            return False
        return self._reap()

    def _reap(self) -> bool:
        """No survivors also means a leader that died after _survivors polled it and is still an unreaped zombie:
        reap it, so proc.returncode holds its exit code (else a hung run's `exit` event says code None)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - only without psutil, where zombies count as alive
                pass
        return True

    # ---------------------------------------------------------------- one attempt

    def _start(self, command: list[str], resume: bool) -> None:
        env = dict(os.environ)
        env[HEARTBEAT_ENV] = self.hb_path
        env[ATTEMPT_ENV] = str(self.attempt)
        if resume:
            env[RESUME_ENV] = "auto"
        self.tracked = {}
        self.proc = subprocess.Popen(command, env=env, start_new_session=True)
        self.event("start", f"started pid {self.proc.pid}: {' '.join(command)}",
                   command=command, resume=resume, heartbeat=self.hb_path)

    def _watch(self) -> tuple[str, dict]:
        """Wait for the attempt to end: ("exit", ...), ("hang", ...) or ("signal", ...)."""
        assert self.proc is not None
        snapshot = read_heartbeat(self.hb_path)  # may be a previous attempt's: only a change counts as a beat
        last, last_change, beaten, max_step = snapshot, time.monotonic(), False, None
        while True:
            if self.pending:
                return "signal", {"signum": self.pending[0]}
            code = self.proc.poll()
            hb = read_heartbeat(self.hb_path)  # read after poll(): an exited run's last beat is counted too
            now = time.monotonic()
            if hb is not None and hb != last:
                last, last_change, beaten = hb, now, True
                if isinstance(hb.get("step"), int):
                    max_step = hb["step"] if max_step is None else max(max_step, hb["step"])
            if code is not None:
                return "exit", {"code": code, "beaten": beaten, "max_step": max_step,
                                "heartbeat": last if beaten else None}
            limit = self.opts.hang_timeout if beaten else self.opts.startup_timeout
            if self.opts.hang_timeout > 0 and now - last_change > limit:
                return "hang", {"age": now - last_change, "beaten": beaten, "max_step": max_step,
                                "phase": (last or {}).get("phase") if beaten else None}
            self._track_descendants()
            self._sleep(self.opts.poll)

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        os.makedirs(self.output_dir, exist_ok=True)
        previous = self._install_signals()
        try:
            return self._loop()
        finally:
            try:
                if self.proc is not None and self.proc.poll() is None:  # a watchdog bug must not orphan the run
                    self.stop_run("watchdog exiting")
            finally:
                self._restore_signals(previous)

    def _loop(self) -> int:
        o = self.opts
        restarts: collections.deque[float] = collections.deque()
        same_step, last_death_step = 0, None
        best_step, streak = None, 0
        while True:
            self.attempt += 1
            resume = self.attempt > 1
            command = resume_command(self.command, not o.no_resume_arg) if resume else list(self.command)
            try:
                self._start(command, resume)
            except OSError as exc:
                self.event("give_up", f"giving up: cannot start {command[0]!r}: {exc}",
                           reason="cannot start", error=str(exc), watchdog_exit=EXIT_CANNOT_START)
                return EXIT_CANNOT_START
            kind, info = self._watch()

            if kind == "signal":
                return self._stop_on_signal(info["signum"])

            if kind == "hang":
                step = (read_heartbeat(self.hb_path) or {}).get("step")
                if info["beaten"]:
                    what = f"no new heartbeat for {info['age']:.0f} s (--hang_timeout {o.hang_timeout:g}) " \
                           f"at step {step}, phase {info['phase']!r}"
                else:
                    what = f"no heartbeat at {self.hb_path} within {info['age']:.0f} s of start " \
                           f"(--startup_timeout {o.startup_timeout:g}); is the trainer writing it?"
                self.event("hang", f"run is hung: {what}", step=step, reason=what,
                           age=round(info["age"], 1), phase=info["phase"])
                if not self.stop_run("hang"):
                    return self._give_up("processes of the hung run survive SIGKILL", step, None)
                code = self.proc.returncode
                self.event("exit", f"hung run ended with code {code} after the stop sequence",
                           step=step, exit_code=code, reason="killed after hang")
            else:
                code = info["code"]
                step = (read_heartbeat(self.hb_path) or {}).get("step")
                how = f"killed by {_signame(-code)}" if code < 0 else f"exited with code {code}"
                self.event("exit", f"run {how} (last heartbeat step {step})", step=step, exit_code=code,
                           reason="success" if code == 0 else how)
                # whatever it left behind (a background worker, a half-dead launcher) goes with it
                if not self.stop_run("cleanup after exit"):
                    return self._give_up("processes of the ended run survive SIGKILL", step, code)
                if code == 0:
                    self.event("done", "run completed successfully", step=step, exit_code=0,
                               reason="success", watchdog_exit=0)
                    return 0
                why = config_error(code, info["heartbeat"])
                if why is not None:
                    return self._give_up(f"the run stopped on a configuration error, which a restart would "
                                         f"repeat: {why}", step, code, exit_code=EXIT_CONFIG_ERROR)
            if self.pending:  # a signal that arrived during the stop sequence still ends the watch
                return self._stop_on_signal(self.pending[0])

            # progress: reaching a step no earlier attempt reached resets the back-off
            progressed = info["max_step"] is not None and (best_step is None or info["max_step"] > best_step)
            if progressed:
                best_step = info["max_step"]
            streak = 1 if progressed else streak + 1
            same_step = same_step + 1 if (step is not None and step == last_death_step) else 1
            last_death_step = step
            if o.same_step_limit > 0 and step is not None and same_step >= o.same_step_limit:
                return self._give_up(f"the run died {same_step} times in a row at step {step} "
                                     f"(--same_step_limit {o.same_step_limit})", step, code)
            now = time.monotonic()
            while restarts and now - restarts[0] > o.window:
                restarts.popleft()
            if len(restarts) >= o.max_restarts:
                return self._give_up(f"{len(restarts)} restarts within the last {o.window:g} s already "
                                     f"(--max_restarts {o.max_restarts})", step, code)
            restarts.append(now)
            how = " ".join(resume_command(self.command, not o.no_resume_arg)[len(self.command):]) or "resume via env"
            self.event("restart", f"restarting as attempt {self.attempt + 1} ({len(restarts)}/{o.max_restarts} "
                       f"restarts within {o.window:g} s; {how}, {RESUME_ENV}=auto)", step=step, exit_code=code,
                       reason=kind if kind == "hang" else "crash", restarts_in_window=len(restarts),
                       progressed=progressed, next_attempt=self.attempt + 1)
            delay = backoff_delay(streak, o.backoff, o.max_backoff)
            self.event("backoff", f"waiting {delay:g} s before restarting", step=step, delay=delay,
                       reason="progress made: back-off reset" if progressed else f"{streak} failure(s) without progress")
            deadline = time.monotonic() + delay
            while not self.pending and time.monotonic() < deadline:
                self._sleep(deadline - time.monotonic())
            if self.pending:
                return self._stop_on_signal(self.pending[0])

    def _give_up(self, why: str, step, code, exit_code: int = EXIT_GAVE_UP) -> int:
        self.event("give_up", f"giving up: {why}; last exit code {code}, last step {step}; "
                   f"events in {self.log_path}", step=step, exit_code=code, reason=why, watchdog_exit=exit_code)
        return exit_code

    def _stop_on_signal(self, signum: int) -> int:
        """Forward the signal to the run, then grace/SIGKILL; no restart."""
        exit_code = STOP_SIGNALS.get(signum, 128 + signum)
        name = _signame(signum)
        step = (read_heartbeat(self.hb_path) or {}).get("step")
        self.event("signal", f"received {name}: stopping the run, no restart (watchdog exits {exit_code})",
                   step=step, signal=name, reason=f"received {name}", watchdog_exit=exit_code)
        if self.proc is None:
            return exit_code
        was_running = self.proc.poll() is None
        if self._survivors(self.proc.pid):
            self.stop_run(f"received {name}", sig=signum)
        if was_running:
            self.event("exit", f"run ended with code {self.proc.returncode} after {name}", step=step,
                       exit_code=self.proc.returncode, reason=f"stopped on {name}")
        return exit_code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options, command = split_argv(argv)
    opts = parser.parse_args(options)
    if not command:
        parser.error("give the command to supervise after `--`, e.g. watchdog.py -- bash finetune_RL.sh")
    for name in ("hang_timeout", "startup_timeout", "window", "backoff", "max_backoff", "grace"):
        if getattr(opts, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if opts.poll <= 0 or opts.max_restarts < 0 or opts.same_step_limit < 0:
        parser.error("--poll must be > 0; --max_restarts and --same_step_limit must be >= 0")
    return Watchdog(opts, command).run()


if __name__ == "__main__":
    sys.exit(main())
