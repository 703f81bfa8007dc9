"""Two CPU processes (gloo): ranks holding different modalities stay in step — same number of model forward calls,
no collective left waiting (fidelity_rank gathers over both ranks; a mismatch would hang until the timeout),
checkpoints written once, complete, with no staging left behind — for the standard and refine trainers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from trainer_utils import write_records

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["standard", "refine"])
def test_two_ranks_with_different_modalities_stay_in_step(tiny_model_dir, tmp_path, trainer):
    # two prompts, one per rank per step: one rank judges an image while the other judges a video
    data = write_records(tmp_path / "d.json", [
        {"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
        {"video": "videos/coffee_pan_l2.mp4", "solution": 2.3, "type": "scoring_video"},
    ])
    out = tmp_path / "out"
    with socket.socket() as sock:  # torchrun's static rendezvous needs a real port (0 hangs)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           os.path.join(HERE, "dist_worker.py"), tiny_model_dir, str(out), data, trainer]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.load(open(out / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 2
    assert ranks[0]["forward_calls"] == ranks[1]["forward_calls"] > 0
    assert {"image", "video"} == set(ranks[0]["kinds"]) | set(ranks[1]["kinds"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not list(out.glob(".staging-*")), "a staging folder was left behind"
    for step in (1, 2):
        ckpt = out / f"checkpoint-{step}"
        assert json.loads((ckpt / "vqrl_complete.json").read_text())["step"] == step
        assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == step
        assert len(list(ckpt.glob("*.safetensors"))) == 1  # one model file: rank 0 wrote it, once
        assert sorted(p.name for p in ckpt.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
