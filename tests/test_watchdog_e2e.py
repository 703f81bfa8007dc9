"""Fault injection against the REAL training entry (`python -m vqrl.grpo`, tiny Qwen2.5-VL, CPU) under the watchdog.

Issue 7's "Done when": a run SIGKILLed at random moments (one of them while a checkpoint is being written) ends
at max_steps with the sample order of an uninterrupted run and each step logged once; a run frozen with SIGSTOP
is caught by the hang timeout, killed and resumed; a command that always fails makes the watchdog give up with a
reason; a configuration error is not retried at all; after every restart no process of the old run's group is left.

Each attempt runs as `bash -c 'sleep 600 & exec python -m vqrl.grpo ...'`: the trainer keeps the attempt's pid
(the process-group leader the watchdog logs) and a `sleep` sidecar lives in its group. Killing only the trainer
orphans the sidecar, so "no process of the old group remains" is only true if the watchdog cleans up.

Two tests guard bugs these runs exposed in the trainer's resume (since fixed in trainers/base.py): a run resumed in
its second epoch replayed the first epoch's sample order, and resume did not restore the model weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from trainer_utils import EXAMPLES, flags
from vqrl.training import checkpoints
from vqrl.training.heartbeat import read_heartbeat
from vqrl.training.metrics import read_metrics

TESTS = Path(__file__).resolve().parent
MAX_STEPS = 10
DATA = os.path.join(EXAMPLES, "RL_examples.json")  # 12 records, 2 prompts a step: 10 steps cross an epoch boundary
# length_reward varies within a group, so advantages and gradients are non-zero and the weights really train
TRAIN_FLAGS = dict(reward_funcs=["recording:record_batch", "recording:length_reward"], max_steps=MAX_STEPS,
                   save_strategy="steps", save_steps=1, save_total_limit=2)
BATCH = 4  # completions per step the reward sees (per_device_train_batch_size of trainer_utils.flags)
STEPS_PER_EPOCH = 6  # 12 records / 2 prompts a step
SIDECAR = "sleep 600 & exec \"$@\""
HANG_TIMEOUT, HANG_POLL = 12.0, 0.5
WAIT = 150.0  # the longest any single wait may take before the test fails (a loaded 2-core CI box)


# ------------------------------------------------------------------------------------------------ helpers


def _env(record: Path) -> dict:
    env = dict(os.environ)
    for name in ("VQRL_HEARTBEAT", "VQRL_RESUME", "VQRL_WATCHDOG_ATTEMPT", "OUTPUT"):
        env.pop(name, None)
    env["VQRL_TEST_RECORD"] = str(record)
    # one thread each: runs overlap (the reference with the killed run), and a tiny model gains nothing from more
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])  # recording:...
    return env


def trainer_argv(model_dir, out: Path, data_files=(DATA,)) -> list[str]:
    return [sys.executable, "-m", "vqrl.grpo", *flags(model_dir, out, list(data_files), **TRAIN_FLAGS)]


def with_sidecar(argv: list[str]) -> list[str]:
    return ["bash", "-c", SIDECAR, "sidecar", *argv]


def samples_per_step(record: Path) -> dict[int, list[str]]:
    """Sample ids the reward saw at each step; a redone step's last batch replaces what a killed attempt saw."""
    seen: dict[int, list[str]] = {}
    for line in record.read_text().splitlines():
        row = json.loads(line)
        seen.setdefault(row["step"], []).append(row["sample_id"])
    return {step: ids[-BATCH:] for step, ids in sorted(seen.items())}


def proc_key(pid: int) -> tuple[int, float] | None:
    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(key: tuple[int, float]) -> bool:
    """The very process (pid and start time: pids get reused) still exists and is not a zombie."""
    try:
        p = psutil.Process(key[0])
        return abs(p.create_time() - key[1]) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) == pgid:
                out.append(p.info["pid"])
        except (psutil.Error, OSError):
            continue
    return out


@dataclass
class Supervised:
    """A watchdog subprocess around the trainer, watched from the test: attempts, group members, restart checks."""

    out: Path
    options: list[str]
    command: list[str]
    env: dict
    proc: subprocess.Popen | None = None
    members: dict[int, set] = field(default_factory=dict)  # attempt -> {(pid, create_time)} of its group
    leaders: dict[int, int] = field(default_factory=dict)  # attempt -> pid (= pgid)
    restart_checks: list[dict] = field(default_factory=list)  # at each new attempt: old processes still alive
    beaten: set = field(default_factory=set)  # attempts whose own heartbeat was seen
    rc: int | None = None

    def start(self) -> "Supervised":
        self.log_path = self.out.parent / f"{self.out.name}.watchdog.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vqrl.watchdog", "--output_dir", str(self.out), *self.options, "--", *self.command],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        path = self.out / "watchdog.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # being appended right now
                pass
        return rows

    def heartbeat(self) -> dict | None:
        return read_heartbeat(self.out / "heartbeat.json")

    def poll(self) -> None:
        """Notice new attempts (checking the old ones left nothing) and remember every member of the live group."""
        for e in self.events():
            if e["event"] == "start" and e["attempt"] not in self.leaders:
                self.leaders[e["attempt"]] = e["pid"]
                self.members.setdefault(e["attempt"], set())
                if e["attempt"] > 1:
                    self._check_old(e["attempt"])
        hb = self.heartbeat()
        self.beaten.update(a for a, pid in self.leaders.items() if hb and hb.get("pid") == pid)
        if self.leaders:
            attempt = max(self.leaders)
            for pid in group_members(self.leaders[attempt]):
                if (key := proc_key(pid)) is not None:
                    self.members[attempt].add(key)

    def _check_old(self, attempt: int) -> None:
        old = {a: pgid for a, pgid in self.leaders.items() if a < attempt}
        left = [k for a in old for k in self.members.get(a, ()) if alive(k)]
        left += [pid for pgid in old.values() for pid in group_members(pgid)]
        self.restart_checks.append({"attempt": attempt, "survivors": left,
                                    "tracked": {a: len(self.members.get(a, ())) for a in old}})

    def current(self) -> tuple[int, int] | None:
        self.poll()
        return (max(self.leaders), self.leaders[max(self.leaders)]) if self.leaders else None

    def wait(self, what: str, predicate, timeout: float = WAIT, interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"watchdog exited ({self.proc.returncode}) while waiting for {what}\n{self.log()[-4000:]}")
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.log()[-4000:]}")

    def sleep(self, seconds: float) -> None:
        """Sleep, still watching the group (a sidecar spawned meanwhile must be known before a kill)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.poll()
            time.sleep(min(0.05, max(0.0, left)))

    def attempt_started(self, attempt: int) -> int:
        return self.wait(f"attempt {attempt} to start", lambda: self.leaders.get(attempt))

    def beat_of(self, pid: int, min_step: int = 0):
        """This attempt's own heartbeat (the file may still hold an earlier attempt's) at step >= min_step."""
        def ok():
            hb = self.heartbeat()
            return hb if hb and hb.get("pid") == pid and (hb.get("step") or 0) >= min_step else None
        return self.wait(f"pid {pid} to beat at step >= {min_step}", ok)

    def wait_gone(self, pid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.005)
        pytest.fail(f"pid {pid} still alive {timeout} s after SIGKILL")

    def finish(self, timeout: float = 300.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.1)
        if self.proc.poll() is None:
            pytest.fail(f"watchdog still running after {timeout:.0f} s\n{self.log()[-4000:]}")
        self.rc = self.proc.returncode
        self.poll()
        self._check_old(max(self.leaders, default=0) + 1)  # after the watch: nothing of any attempt remains
        return self.rc

    def close(self) -> None:
        """Never leave a watchdog, trainer or sidecar behind, whatever happened in the test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # forwarded to the run
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.poll()
        for key in [k for keys in self.members.values() for k in keys if alive(k)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(key[0], signal.SIGKILL)
        for pgid in self.leaders.values():  # members never tracked (a run nobody polled) are still in the group
            if group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        self._log.close()

    # ---- what the attempts did, from the combined log (the trainer's stderr is the watchdog's)
    def resumed_from(self) -> dict[int, str | None]:
        attempt, out = 0, {}
        for line in self.log().splitlines():
            if m := re.search(r"\[watchdog\] .* attempt (\d+): started pid", line):
                attempt = int(m.group(1))
                out[attempt] = None
            elif m := re.search(r"resuming from (\S+)", line):
                out[attempt] = m.group(1)
        return out


def assert_completed_like(reference: dict, run: Supervised, record: Path, order_steps=range(MAX_STEPS)) -> None:
    """The shared end state of a faulted run: max_steps reached, same data order (at `order_steps`), each step
    logged once, no debris."""
    out = run.out
    done = [e for e in run.events() if e["event"] == "done"]
    assert run.rc == 0 and len(done) == 1 and done[0]["step"] == MAX_STEPS, run.log()[-3000:]
    assert read_heartbeat(out / "heartbeat.json")["step"] == MAX_STEPS
    state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    assert (out / "final" / "config.json").is_file()

    seen = samples_per_step(record)  # a redone step's last batch replaces what the killed attempt saw
    assert sorted(seen) == list(range(MAX_STEPS)) and all(len(v) == BATCH for v in seen.values())
    assert {s: seen[s] for s in order_steps} == {s: reference["order"][s] for s in order_steps}

    rows = read_metrics(str(out / "metrics.jsonl"))
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, MAX_STEPS + 1))
    assert [r["step"] for r in rows if "train_runtime" in r] == [MAX_STEPS]
    assert len(rows) == MAX_STEPS + 1

    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith((".staging", ".trash"))], names
    ckpts = sorted((n for n in names if re.fullmatch(r"checkpoint-\d+", n)), key=lambda n: int(n.split("-")[1]))
    assert ckpts == [f"checkpoint-{MAX_STEPS - 1}", f"checkpoint-{MAX_STEPS}"]  # save_total_limit 2
    assert all(checkpoints.is_complete(str(out / n)) for n in ckpts)


# ------------------------------------------------------------------------------------------------ runs (shared)


FAIL_RESTARTS = 2


@pytest.fixture(scope="module")
def background(tiny_model_dir, tmp_path_factory):
    """Runs that need no watching start at once and overlap the killed run (start-up is one busy core for ~8 s):
    the uninterrupted reference, the watchdog around a run that crashes at its first step every time, and the
    watchdog around a run with a configuration error behind a launcher that turns exit 2 into 1."""
    base = tmp_path_factory.mktemp("reference")
    out, record = base / "run", base / "record.jsonl"
    log = open(base / "trainer.log", "w")
    ref = subprocess.Popen(trainer_argv(tiny_model_dir, out), env=_env(record), stdout=log, stderr=subprocess.STDOUT)

    fbase = tmp_path_factory.mktemp("failing")
    fout = fbase / "run"  # the reward raises at step 1: exit 1, every attempt
    opts = ["--backoff", "0.1", "--grace", "2", "--poll", "0.2", "--max_restarts", str(FAIL_RESTARTS),
            "--same_step_limit", "0", "--startup_timeout", "240"]
    argv = trainer_argv(tiny_model_dir, fout) + ["--reward_funcs", "crashing:reward"]
    failing = Supervised(fout, opts, with_sidecar(argv), _env(fbase / "record.jsonl")).start()

    cbase = tmp_path_factory.mktemp("config")
    cout, missing = cbase / "run", cbase / "missing.json"  # a configuration error: the data file does not exist
    launcher = ["bash", "-c", '"$@" || exit 1', "launcher"]  # what accelerate / torchrun do to exit code 2
    config = Supervised(cout, opts, launcher + trainer_argv(tiny_model_dir, cout, [str(missing)]),
                        _env(cbase / "record.jsonl")).start()
    handles = {"reference": (ref, out, record, base / "trainer.log"), "failing": failing,
               "config": (config, missing)}
    try:
        yield handles
    finally:
        log.close()
        if ref.poll() is None:
            ref.kill()
            ref.wait()
        failing.close()
        config.close()


@pytest.fixture(scope="module")
def reference(background, tiny_model_dir):
    """The uninterrupted run with the same flags: which samples each step sees, and the weights it ends with."""
    ref, out, record, log = background["reference"]
    assert ref.wait(timeout=400) == 0, log.read_text()[-4000:]
    order = samples_per_step(record)
    assert sorted(order) == list(range(MAX_STEPS)) and all(len(v) == BATCH for v in order.values())
    assert len(record.read_text().splitlines()) == MAX_STEPS * BATCH  # nothing redone in the reference
    weights = load_file(str(out / "final" / "model.safetensors"))
    initial = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert weights.keys() == initial.keys()
    assert any(not torch.equal(weights[k], initial[k]) for k in weights)  # it trained: a weight check means something
    return {"order": order, "weights": weights}


@pytest.fixture(scope="module")
def failing_run(background):
    failing = background["failing"]
    failing.finish(timeout=400)
    return {"run": failing}


@pytest.fixture(scope="module")
def config_error_run(background):
    run, missing = background["config"]
    run.finish(timeout=400)
    return {"run": run, "missing": missing}


@pytest.fixture(scope="module")
def killed_run(background, tiny_model_dir, tmp_path_factory):
    """SIGKILL at 5+ seeded-random moments: one during start-up, three mid-training (the trainer alone or its whole
    group) and, until one lands, during a checkpoint write (a `.staging-checkpoint-*` folder exists)."""
    base = tmp_path_factory.mktemp("killed")
    out, record = base / "run", base / "record.jsonl"
    rng = random.Random(7)
    opts = ["--backoff", "0.2", "--max_backoff", "1", "--grace", "3", "--poll", "0.2", "--hang_timeout", "120",
            "--startup_timeout", "240", "--max_restarts", "12", "--window", "3600"]
    run = Supervised(out, opts, with_sidecar(trainer_argv(tiny_model_dir, out)), _env(record)).start()
    kills: list[dict] = []
    try:
        # the start-up, two mid-training and the mid-save kill in a random order, each at a random step of the
        # first epoch; then a "late" one at step 7-8, so that the last resume lands in the second epoch
        plan = ["startup", "train", "train", "save"]
        rng.shuffle(plan)
        plan.append("late")
        early = sorted(rng.sample(range(1, STEPS_PER_EPOCH + 1), 3))
        victims = ["trainer", "group", rng.choice(["trainer", "group"])]  # who gets SIGKILL in train/late kills
        rng.shuffle(victims)

        while plan:
            kind = plan.pop(0)
            target = None
            if kind != "startup":
                planned = rng.choice([7, 8]) if kind == "late" else (early.pop(0) if early else 0)
                # past the last death's step: dying 3 times at one step would (rightly) make the watchdog give up
                target = max([planned] + [(k["step"] or 0) + 1 for k in kills])
                if target > MAX_STEPS - 1:
                    break
            attempt = len(kills) + 1
            pid = run.attempt_started(attempt)
            kill = {"kind": kind, "attempt": attempt, "pid": pid}
            if kind == "startup":  # model loading, imports: before (or around) the first beat
                delay = rng.uniform(1.0, 4.0)
                kill["delay"] = delay
                run.sleep(delay)
                os.kill(pid, signal.SIGKILL)
            elif kind in ("train", "late"):
                run.beat_of(pid, target)
                delay = rng.uniform(0.0, 0.6) if kind == "train" else 0.0
                run.sleep(delay)
                victim = victims.pop()
                (os.kill if victim == "trainer" else os.killpg)(pid, signal.SIGKILL)
                kill.update(delay=delay, victim=victim, min_step=target)
            else:  # save: from this attempt's beat at the target step, wait for the next staged checkpoint
                run.beat_of(pid, target)

                def staging():
                    try:
                        return [n for n in os.listdir(out) if n.startswith(checkpoints.STAGING_PREFIX)]
                    except OSError:
                        return []
                deadline = time.monotonic() + WAIT
                while not (seen := staging()) and time.monotonic() < deadline and run.proc.poll() is None:
                    time.sleep(0.001)
                assert seen, f"no staged checkpoint appeared\n{run.log()[-3000:]}"
                os.killpg(pid, signal.SIGKILL)
                run.wait_gone(pid)
                left = staging()  # frozen now: what a crash mid-save leaves
                partial = [n for n in left if not (out / n / n[len(".staging-"):] / checkpoints.MARKER).exists()]
                kill.update(seen=seen, left=left, partial=partial)
                if not left:  # the rename beat the kill: not a mid-save kill after all; try again next attempt
                    plan.insert(0, "save")
            run.wait_gone(pid)
            kill["step"] = (run.heartbeat() or {}).get("step")
            kill["latest_complete"] = checkpoints.latest_complete(str(out))  # what the next attempt must resume
            kills.append(kill)
        run.finish()
    finally:
        run.close()
    return {"run": run, "kills": kills, "record": record}


@pytest.fixture(scope="module")
def frozen_run(reference, failing_run, tiny_model_dir, tmp_path_factory):
    """SIGSTOP to the whole group of attempt 1 at a seeded-random point mid-training. It runs alone (after the
    reference and the failing run): the hang timeout must not catch a slow-but-alive step."""
    base = tmp_path_factory.mktemp("frozen")
    out, record = base / "run", base / "record.jsonl"
    rng = random.Random(11)
    opts = ["--backoff", "0.2", "--grace", "3", "--poll", str(HANG_POLL), "--hang_timeout", str(HANG_TIMEOUT),
            "--startup_timeout", "240", "--max_restarts", "3"]
    run = Supervised(out, opts, with_sidecar(trainer_argv(tiny_model_dir, out)), _env(record)).start()
    try:
        pid = run.attempt_started(1)
        step = rng.randint(2, 4)  # stays in the first epoch (see the weights test)
        run.beat_of(pid, step)
        run.sleep(rng.uniform(0.0, 0.3))
        os.killpg(pid, signal.SIGSTOP)
        stopped_at = time.time()
        time.sleep(0.3)
        statuses = {k: psutil.Process(k[0]).status() for k in run.members[1] if alive(k)}
        frozen_hb, latest = run.heartbeat(), checkpoints.latest_complete(str(out))
        run.finish()
    finally:
        run.close()
    return {"run": run, "record": record, "stopped_at": stopped_at, "statuses": statuses, "frozen_hb": frozen_hb,
            "latest_complete": latest}


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_sigkill_at_random_moments_finishes_like_an_uninterrupted_run(killed_run, reference):
    run, kills = killed_run["run"], killed_run["kills"]
    assert len(kills) >= 5, kills
    assert {k["kind"] for k in kills} == {"startup", "train", "save", "late"}

    # at least one kill landed while a checkpoint was being written: a staged (unrenamed) folder was left behind
    mid_save = [k for k in kills if k["kind"] == "save" and k["left"]]
    assert mid_save, kills
    for k in mid_save:
        staged_step = int(k["left"][0].rsplit("-", 1)[1])
        # save_total_limit 2 kept the previous complete checkpoint while the new one was being written
        previous = str(run.out / f"checkpoint-{staged_step - 1}") if staged_step > 1 else None
        assert k["latest_complete"] == previous, k

    # each attempt that got going resumed from the newest checkpoint complete when the one before it died (after
    # the mid-save kill: the previous step's, never the staged one); one killed in start-up may not have got there
    resumed = run.resumed_from()
    for k in kills:
        if k["attempt"] + 1 in run.beaten or resumed.get(k["attempt"] + 1):
            assert resumed[k["attempt"] + 1] == k["latest_complete"], (k, resumed)
    assert k["attempt"] + 1 in run.beaten and resumed[k["attempt"] + 1] is not None  # the last, complete, attempt
    assert sum(k["attempt"] + 1 in run.beaten and k["latest_complete"] is not None for k in kills) >= 3, kills

    evs = run.events()

    # the watchdog saw each kill as a SIGKILL death and restarted with --resume auto
    exits = {e["attempt"]: e for e in evs if e["event"] == "exit"}
    for k in kills:
        assert exits[k["attempt"]]["exit_code"] == -signal.SIGKILL, (k, exits[k["attempt"]])
    restarts = [e for e in evs if e["event"] == "restart"]
    assert [e["next_attempt"] for e in restarts] == [k["attempt"] + 1 for k in kills]
    starts = [e for e in evs if e["event"] == "start"]
    assert len(starts) == len(kills) + 1
    assert not starts[0]["resume"] and "--resume" not in starts[0]["command"]
    assert all(s["resume"] and s["command"][-2:] == ["--resume", "auto"] for s in starts[1:])
    assert exits[len(starts)]["exit_code"] == 0 and not [e for e in evs if e["event"] in ("hang", "give_up")]

    # the last resume is in the second epoch (the premise of the epoch-order test below); the first epoch, redone after
    # several kills and resumes, saw exactly the uninterrupted run's samples in the same order
    assert max(int(p.rsplit("-", 1)[1]) for p in resumed.values() if p) >= STEPS_PER_EPOCH, resumed
    assert_completed_like(reference, run, killed_run["record"], order_steps=range(STEPS_PER_EPOCH))


@pytest.mark.slow
def test_sigkilled_run_keeps_the_sample_order_in_every_epoch(killed_run, reference):
    seen = samples_per_step(killed_run["record"])
    assert seen == reference["order"]


@pytest.mark.slow
def test_sigstop_freeze_is_detected_within_hang_timeout_killed_and_resumed(reference, frozen_run):
    run = frozen_run["run"]
    # the whole group (trainer + sidecar) really was frozen
    assert len(frozen_run["statuses"]) >= 2 and set(frozen_run["statuses"].values()) == {psutil.STATUS_STOPPED}
    evs = run.events()
    hangs = [e for e in evs if e["event"] == "hang"]
    assert len(hangs) == 1 and hangs[0]["attempt"] == 1, hangs
    hang = hangs[0]
    # not before the timeout, and within it (+ one poll, + slack for a loaded machine) of the freeze
    assert hang["age"] >= HANG_TIMEOUT
    assert hang["time"] - frozen_run["stopped_at"] <= HANG_TIMEOUT + HANG_POLL + 4.0, hang
    assert "--hang_timeout" in hang["reason"] and hang["step"] == frozen_run["frozen_hb"]["step"]
    after = evs[evs.index(hang) + 1:]
    kill = next(e for e in after if e["event"] == "kill")
    assert kill["attempt"] == 1 and kill["signal"] == "SIGTERM" and kill["reason"] == "hang"
    exit1 = next(e for e in after if e["event"] == "exit")
    assert exit1["attempt"] == 1 and exit1["exit_code"] in (-signal.SIGTERM, -signal.SIGKILL), exit1
    restart = next(e for e in after if e["event"] == "restart")
    assert restart["reason"] == "hang" and restart["next_attempt"] == 2
    starts = [e for e in evs if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resume"]
    # resumed from the newest checkpoint complete at the freeze (one being written then was cleaned up); that is
    # in the first epoch, so the whole order (both epochs) must match the uninterrupted run's
    latest = frozen_run["latest_complete"]
    assert latest is not None and int(latest.rsplit("-", 1)[1]) < STEPS_PER_EPOCH
    assert run.resumed_from()[2] == latest

    assert_completed_like(reference, run, frozen_run["record"])


@pytest.mark.slow
def test_always_failing_command_gives_up_after_max_restarts(failing_run):
    run = failing_run["run"]
    log, evs = run.log(), run.events()
    assert run.rc == 1, log[-3000:]
    n = FAIL_RESTARTS + 1  # the first try and the restarts
    assert [e["attempt"] for e in evs if e["event"] == "start"] == list(range(1, n + 1))
    assert [e["exit_code"] for e in evs if e["event"] == "exit"] == [1] * n
    assert log.count("injected crash in the reward function") >= n  # the trainer's own reason, each time
    give_up = evs[-1]
    assert give_up["event"] == "give_up" and give_up["watchdog_exit"] == 1 and give_up["exit_code"] == 1
    assert f"--max_restarts {FAIL_RESTARTS}" in give_up["reason"]
    # the readable last line says why, and with which exit code the run kept failing
    last = [line for line in log.splitlines() if line.startswith("[watchdog]")][-1]
    assert re.search(rf"giving up: {FAIL_RESTARTS} restarts within the last .* s already "
                     rf"\(--max_restarts {FAIL_RESTARTS}\); last exit code 1", last), last
    assert all(not c["survivors"] for c in run.restart_checks), run.restart_checks


@pytest.mark.slow
def test_a_configuration_error_behind_a_launcher_is_not_retried(config_error_run):
    """The trainer refuses a missing data file before loading the model (exit 2); the launcher turns that into 1;
    its heartbeat still tells the watchdog, which gives up at once with the reason instead of restarting."""
    run, missing = config_error_run["run"], config_error_run["missing"]
    log, evs = run.log(), run.events()
    assert run.rc == 2, log[-3000:]
    assert [e["event"] for e in evs] == ["start", "exit", "give_up"]
    assert evs[1]["exit_code"] == 1
    assert f"--data_files {missing}: no such file" in evs[-1]["reason"]
    assert log.count(f"vqrl: configuration error: --data_files {missing}: no such file") == 1
    assert "Loading weights" not in log and not (run.out.parent / "record.jsonl").exists()


@pytest.mark.slow
def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(reference, frozen_run):
    # the frozen run resumes in the first epoch, so the sampler bug above does not touch it: with weights restored
    # on resume, its training is the uninterrupted run's, bit for bit (checked in-process with a patched loader)
    for run in (frozen_run["run"],):
        weights = load_file(str(run.out / "final" / "model.safetensors"))
        assert weights.keys() == reference["weights"].keys()
        diff = {k: (weights[k] - reference["weights"][k]).abs().max().item() for k in weights}
        assert max(diff.values()) <= 1e-6, sorted(diff.items(), key=lambda kv: -kv[1])[:5]
        assert "There were missing keys in the checkpoint model loaded" not in run.log()


@pytest.mark.slow
def test_no_process_of_the_old_group_survives_a_restart(killed_run, frozen_run):
    for run in (killed_run["run"], frozen_run["run"]):
        restarts = [e for e in run.events() if e["event"] == "restart"]
        # one check at each new attempt (taken as soon as its start event appeared) and one after the watch
        assert [c["attempt"] for c in run.restart_checks] == [e["next_attempt"] for e in restarts] + [len(restarts) + 2]
        for check in run.restart_checks:
            assert check["survivors"] == [], check
            # the check looked at real processes: each old attempt had its trainer and its sidecar `sleep`
            assert all(n >= 2 for n in check["tracked"].values()), check
    # where only the trainer was SIGKILLed its sidecar outlived it, and the watchdog had to kill it before the
    # restart: the empty survivor lists above are the watchdog's clean-up, not luck
    run, lone = killed_run["run"], [k for k in killed_run["kills"] if k.get("victim") == "trainer"]
    assert lone, killed_run["kills"]
    for k in lone:
        cleanup = [e for e in run.events() if e["event"] == "kill" and e["attempt"] == k["attempt"]]
        assert cleanup and cleanup[0]["reason"] == "cleanup after exit", (k, cleanup)
