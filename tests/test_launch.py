"""vLLM server-mode launcher (vqrl.launch) with a stand-in server: it waits for health, trains, and always stops the
server's whole process group; bad command lines are refused. Fast: small fake processes, sub-second timeouts."""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from vqrl import launch

# A stand-in for `trl vllm-serve`: answers /health with $STATUS (after $DELAY s), records its environment, and
# starts a worker in its process group (one that ignores SIGTERM if $STUBBORN, as a stuck engine worker may).
SERVER = textwrap.dedent("""
    import http.server, json, os, subprocess, sys, time
    port, out = int(sys.argv[1]), sys.argv[2]
    status, delay = int(os.environ.get("STATUS", "200")), float(os.environ.get("DELAY", "0"))
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if os.environ.get("STUBBORN") else ""
    worker = subprocess.Popen([sys.executable, "-c", f"import signal, time; {ignore}print('ready', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE)
    worker.stdout.readline()  # its SIGTERM handling is in place
    with open(out, "w") as f:
        json.dump({"pid": os.getpid(), "worker": worker.pid, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
    time.sleep(delay)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path.startswith("/health") else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split(")")[-1].split()[0] != "Z"


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether `pid` has exited within `within` seconds (a signal is delivered asynchronously)."""
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def server_script(tmp_path):
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    """An in-process HTTP server whose /health answers `status`."""
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_Health,), {"status": status})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/health"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_wait_healthy_returns_on_200_and_times_out_otherwise(health_server):
    t0 = time.monotonic()
    launch.wait_healthy(health_server(200), timeout=5, interval=0.05)
    assert time.monotonic() - t0 < 2
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not answer http://127\.0\.0\.1:\d+/health within 1 s"):
        launch.wait_healthy(health_server(503), timeout=1.0, interval=0.05)
    assert 1.0 <= time.monotonic() - t0 < 3
    with pytest.raises(TimeoutError):  # nothing listens at all
        launch.wait_healthy(f"http://127.0.0.1:{_free_port()}/health", timeout=0.5, interval=0.05)


def test_wait_healthy_fails_early_when_the_server_dies():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    proc.wait()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="vLLM server exited with code 3 before answering"):
        launch.wait_healthy(f"http://127.0.0.1:{_free_port()}/health", timeout=30, proc=proc, interval=0.05)
    assert time.monotonic() - t0 < 5


def test_stop_group_kills_the_whole_group_even_a_member_ignoring_sigterm(server_script, tmp_path):
    info = tmp_path / "info.json"
    proc = subprocess.Popen([sys.executable, str(server_script), str(_free_port()), str(info)],
                            start_new_session=True, env={**os.environ, "STUBBORN": "1"})
    for _ in range(200):
        if info.exists() and info.stat().st_size:
            break
        time.sleep(0.05)
    worker = json.loads(info.read_text())["worker"]
    assert _alive(worker)
    t0 = time.monotonic()
    launch.stop_group(proc, grace=1.0)
    assert proc.returncode == -signal.SIGTERM  # the server itself went on SIGTERM
    assert time.monotonic() - t0 >= 1.0  # the worker ignored SIGTERM: the grace period ran out
    assert _gone(worker)


def test_stop_group_of_a_quick_exit_does_not_wait_for_the_grace_period():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    t0 = time.monotonic()
    launch.stop_group(proc, grace=20.0)
    assert proc.returncode == -signal.SIGTERM and time.monotonic() - t0 < 5


def test_serve_and_train_runs_training_after_health_then_stops_the_server(server_script, tmp_path):
    port, info, trained = _free_port(), tmp_path / "info.json", tmp_path / "trained.json"
    train = [sys.executable, "-c", textwrap.dedent(f"""
        import json, os, sys, urllib.request
        status = urllib.request.urlopen("http://127.0.0.1:{port}/health").status  # the server is up before training
        json.dump({{"status": status, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}}, open({str(trained)!r}, "w"))
        sys.exit(5)
    """)]
    log = io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = launch.serve_and_train(
        [sys.executable, str(server_script), str(port), str(info)], train, f"http://127.0.0.1:{port}/health", 60,
        server_env={"CUDA_VISIBLE_DEVICES": "0,1", "DELAY": "0.5"}, train_env={"CUDA_VISIBLE_DEVICES": "2,3"},
        log=log)
    assert rc == 5  # the training command's exit code
    assert json.loads(trained.read_text()) == {"status": 200, "cuda": "2,3"}
    server = json.loads(info.read_text())
    assert server["cuda"] == "0,1"
    assert _gone(server["pid"]) and _gone(server["worker"])
    text = log.getvalue()
    assert "started vLLM server" in text and "server healthy" in text and "stopped vLLM server" in text
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # our signal handlers are restored


def test_serve_and_train_stops_the_server_when_it_never_gets_healthy(server_script, tmp_path):
    port, info = _free_port(), tmp_path / "info.json"
    with pytest.raises(TimeoutError, match="did not answer"):
        launch.serve_and_train([sys.executable, str(server_script), str(port), str(info)],
                               [sys.executable, "-c", "raise SystemExit('training must not start')"],
                               f"http://127.0.0.1:{port}/health", 2.0, server_env={"STATUS": "503"},
                               log=io.StringIO())
    server = json.loads(info.read_text())
    assert _gone(server["pid"]) and _gone(server["worker"])


def test_main_passes_gpus_and_commands(monkeypatch):
    seen = {}
    monkeypatch.setattr(launch, "serve_and_train", lambda *a, **kw: seen.update(args=a, kw=kw) or 7)
    rc = launch.main(["--health_url", "http://h:1/health/", "--timeout", "12", "--server_gpus", "0",
                      "--train_gpus", "1,2", "--", "serve", "--model", "m", "--", "train", "--x"])
    assert rc == 7
    assert seen["args"] == (["serve", "--model", "m"], ["train", "--x"], "http://h:1/health/", 12.0)
    assert seen["kw"] == {"server_env": {"CUDA_VISIBLE_DEVICES": "0"}, "train_env": {"CUDA_VISIBLE_DEVICES": "1,2"}}
    launch.main(["serve", "--", "train"])
    assert seen["args"][:2] == (["serve"], ["train"]) and seen["kw"] == {"server_env": None, "train_env": None}


@pytest.mark.parametrize("argv, message", [
    (["--", "serve", "train"], "give the server command, then --, then the training command"),
    (["--", "--", "train"], "both a server command and a training command are needed"),
    (["--", "serve", "--"], "both a server command and a training command are needed"),
])
def test_main_refuses_incomplete_command_lines(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        launch.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_sigterm_to_the_launcher_stops_training_and_the_server(server_script, tmp_path):
    """A scheduler's SIGTERM mid-training: the launcher ends training, stops the server's group and exits 130."""
    port, info, started = _free_port(), tmp_path / "info.json", tmp_path / "training.pid"
    train = f"import os, time; open({str(started)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    launcher = subprocess.Popen([sys.executable, "-m", "vqrl.launch", "--health_url",
                                 f"http://127.0.0.1:{port}/health", "--timeout", "60", "--",
                                 sys.executable, str(server_script), str(port), str(info), "--",
                                 sys.executable, "-c", train], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if started.exists() and started.read_text():
                break
            time.sleep(0.05)
        training = int(started.read_text())
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 130
    finally:
        if launcher.poll() is None:
            launcher.kill()
    server = json.loads(info.read_text())
    assert _gone(server["pid"]) and _gone(server["worker"]) and _gone(training)
    assert "stopped vLLM server" in launcher.stderr.read()
