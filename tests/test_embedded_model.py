"""The embedded tiny model (training with no --model_name_or_path) is built by a helper process that must run on its
own even when a launcher started the rank that asks for it."""

from __future__ import annotations

import subprocess

from vqrl import grpo


def test_the_builder_process_gets_no_launch_variables(tmp_path, monkeypatch):
    """Under `accelerate launch --num_processes 2` (NPROC=2 bash finetune_RL.sh with no MODEL) the builder inherited
    RANK, WORLD_SIZE, MASTER_PORT and accelerate's DeepSpeed settings, joined the launch's process group as one more
    rank and waited forever."""
    launch = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": "29500", "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "x", "ACCELERATE_USE_DEEPSPEED": "true",
              "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    calls = []

    def fake_run(cmd, check, env=None, **kwargs):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(grpo.subprocess, "run", fake_run)
    path = grpo.embedded_model()
    assert path.startswith(str(tmp_path))
    (cmd, env), = calls
    assert cmd[-1] == path and "vqrl.training.warmup" in cmd
    assert env is not None and not set(launch) & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["XDG_CACHE_HOME"] == str(tmp_path)  # the rest is kept


def test_single_process_env_keeps_everything_else():
    env = {"PATH": "/bin", "HOME": "/root", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "RANK": "1",
           "ACCELERATE_MIXED_PRECISION": "bf16", "DEEPSPEED_ZERO_STAGE": "3", "MY_RANK_NOTE": "x"}
    assert grpo.single_process_env(env) == {"PATH": "/bin", "HOME": "/root", "OMP_NUM_THREADS": "1",
                                            "DS_ACCELERATOR": "cpu", "MY_RANK_NOTE": "x"}
