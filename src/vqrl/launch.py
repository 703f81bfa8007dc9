"""Launch helpers for vLLM server mode: start `trl vllm-serve`, wait until it answers, run training, stop it.

The server runs in its own process group and is always stopped on exit (normal, error or signal); this module
never builds shell strings: commands are argument lists.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None, interval: float = 1.0) -> None:
    """Poll `url` until it answers 200; fail early if the server process dies, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"vLLM server did not answer {url} within {timeout:.0f} s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the server's whole process group (engine workers included), SIGKILL what is left after `grace`."""
    pgid = proc.pid
    if proc.poll() is None or _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
        time.sleep(0.2)
    if proc.poll() is None or _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def serve_and_train(server_cmd: list[str], train_cmd: list[str], health_url: str, timeout: float,
                    server_env: dict | None = None, train_env: dict | None = None, log=sys.stderr) -> int:
    server = subprocess.Popen(server_cmd, start_new_session=True, env={**os.environ, **(server_env or {})})
    print(f"[launch] started vLLM server (pid {server.pid}): {' '.join(server_cmd)}", file=log)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in previous:
        signal.signal(s, on_signal)
    try:
        wait_healthy(health_url, timeout, server)
        print(f"[launch] server healthy at {health_url}; training: {' '.join(train_cmd)}", file=log)
        return subprocess.call(train_cmd, env={**os.environ, **(train_env or {})})
    except KeyboardInterrupt:
        return 130
    finally:
        stop_group(server)
        print(f"[launch] stopped vLLM server (exit {server.returncode})", file=log)
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqrl.launch",
                                     description="serve-and-train: SERVER_CMD ... -- TRAIN_CMD ...")
    parser.add_argument("--health_url", default="http://127.0.0.1:8000/health/")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--server_gpus", default=None, help="CUDA_VISIBLE_DEVICES for the server")
    parser.add_argument("--train_gpus", default=None, help="CUDA_VISIBLE_DEVICES for training")
    parser.add_argument("commands", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmds = args.commands[1:] if args.commands[:1] == ["--"] else args.commands
    if "--" not in cmds:
        parser.error("give the server command, then --, then the training command")
    cut = cmds.index("--")
    server_cmd, train_cmd = cmds[:cut], cmds[cut + 1:]
    if not server_cmd or not train_cmd:
        parser.error("both a server command and a training command are needed")
    return serve_and_train(
        server_cmd, train_cmd, args.health_url, args.timeout,
        server_env={"CUDA_VISIBLE_DEVICES": args.server_gpus} if args.server_gpus else None,
        train_env={"CUDA_VISIBLE_DEVICES": args.train_gpus} if args.train_gpus else None,
    )


if __name__ == "__main__":
    sys.exit(main())
