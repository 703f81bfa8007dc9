"""finetune_RL.sh and finetune_RL_vllm.sh: relative paths are read from the caller's folder, every value stays one
argument (spaces and all), the demo's defaults point into the repository. A fake PYTHON records the command the
script would run, so these take a fraction of a second; one slow test runs the real trainer on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
# records its arguments (one JSON list per call) and plays `python -c 'import torch; ...'` with FAKE_NGPU GPUs
if [[ $1 == -c ]]; then echo "${FAKE_NGPU:-0}"; exit 0; fi
printf '%s\\0' "$@" > "$FAKE_LOG.$$"
exit 0
"""


@pytest.fixture
def caller(tmp_path):
    """A user's working folder, far from the repository, with a space in its name and in its paths."""
    home = tmp_path / "my work"
    (home / "data").mkdir(parents=True)
    (home / "data" / "a.json").write_text("[]")
    (home / "data" / "b.json").write_text("[]")
    (home / "image root").mkdir()
    (home / "videos").mkdir()
    (home / "models" / "q 7b").mkdir(parents=True)
    (home / "recipe.yaml").write_text("trainer: standard\n")
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {"home": home, "python": str(fake), "log": tmp_path / "calls"}


def launch(caller, script="finetune_RL.sh", args=(), **env_vars):
    env = {k: v for k, v in os.environ.items() if k not in (
        "MODEL", "DATA", "IMAGE_ROOT", "VIDEO_ROOT", "OUTPUT", "RECIPE", "NPROC", "TRAINER", "DS_CONFIG", "LR",
        "MAX_STEPS", "BATCH", "NUM_GENERATIONS", "MAX_COMPLETION", "DATA_WEIGHTS", "VLLM_MODE")}
    env.update({"PYTHON": caller["python"], "FAKE_LOG": str(caller["log"]), "NPROC": "0", **env_vars})
    proc = subprocess.run(["bash", str(REPO / script), *args], cwd=caller["home"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = list(caller["log"].parent.glob(caller["log"].name + ".*"))
    assert len(calls) == 1, calls
    argv = calls[0].read_bytes().decode().split("\0")[:-1]
    calls[0].unlink()
    return argv


def values(argv, flag):
    """The values after `flag` up to the next flag."""
    i = argv.index(flag) + 1
    out = []
    while i < len(argv) and not argv[i].startswith("-"):
        out.append(argv[i])
        i += 1
    return out


def test_relative_paths_are_the_callers_and_spaces_stay_in_one_argument(caller):
    home = caller["home"]
    argv = launch(caller, args=["--beta", "0.1"], MODEL="models/q 7b", DATA="data/a.json", IMAGE_ROOT="image root",
                  VIDEO_ROOT="videos", OUTPUT="runs/first try")
    assert argv[:2] == ["-m", "vqrl.grpo"]
    assert values(argv, "--model_name_or_path") == [str(home / "models" / "q 7b")]
    assert values(argv, "--data_files") == [str(home / "data" / "a.json")]
    assert values(argv, "--image_root") == [str(home / "image root")]
    assert values(argv, "--video_root") == [str(home / "videos")]
    assert values(argv, "--output_dir") == [str(home / "runs" / "first try")]
    assert argv[-2:] == ["--beta", "0.1"] and "--use_cpu" in argv
    assert values(argv, "--learning_rate") == ["1e-6"]  # a real model gets the seed's recipe, not the demo's


def test_several_data_files_and_roots(caller):
    home = caller["home"]
    argv = launch(caller, MODEL="models/q 7b", DATA="data/a.json data/b.json", IMAGE_ROOT="/abs/one /abs/two",
                  DATA_WEIGHTS="1 0.5")
    assert values(argv, "--data_files") == [str(home / "data" / "a.json"), str(home / "data" / "b.json")]
    assert values(argv, "--image_root") == ["/abs/one", "/abs/two"]
    assert values(argv, "--data_weights") == ["1", "0.5"]


def test_a_hub_id_is_left_alone(caller):
    argv = launch(caller, MODEL="Qwen/Qwen2.5-VL-7B-Instruct")
    assert values(argv, "--model_name_or_path") == ["Qwen/Qwen2.5-VL-7B-Instruct"]


def test_the_demo_defaults_point_into_the_repository(caller):
    argv = launch(caller)
    assert "--model_name_or_path" not in argv  # the embedded model
    assert values(argv, "--data_files") == [str(REPO / "examples" / "RL_examples.json")]
    assert values(argv, "--image_root") == [str(REPO / "examples")]
    assert values(argv, "--output_dir") == [str(REPO / "outputs" / "demo")]
    assert values(argv, "--reward_funcs") == ["format", "score_l1"] and values(argv, "--max_steps") == ["30"]


def test_recipes_from_the_caller_or_the_repository(caller):
    argv = launch(caller, RECIPE="recipe.yaml")
    assert values(argv, "--config") == [str(caller["home"] / "recipe.yaml")]
    assert "--max_steps" not in argv  # the recipe keeps its values
    argv = launch(caller, RECIPE="configs/recipes/q_insight.yaml", OUTPUT="out")
    assert values(argv, "--config") == [str(REPO / "configs" / "recipes" / "q_insight.yaml")]
    assert values(argv, "--output_dir") == [str(caller["home"] / "out")]


def test_gpus_launch_accelerate_with_the_repositorys_deepspeed_file(caller):
    argv = launch(caller, NPROC="2", MODEL="models/q 7b")
    assert argv[:2] == ["-m", "accelerate.commands.launch"]
    assert values(argv, "--config_file") == [str(REPO / "configs" / "accelerate" / "zero3.yaml")]
    assert values(argv, "--deepspeed_config_file") == [str(REPO / "configs" / "deepspeed" / "zero3.json")]
    assert values(argv, "--num_processes") == ["2"] and "vqrl.grpo" in argv


def test_vllm_colocate_goes_through_finetune_rl_with_the_same_paths(caller):
    argv = launch(caller, script="finetune_RL_vllm.sh", MODEL="models/q 7b", IMAGE_ROOT="image root")
    assert values(argv, "--trainer") == ["vllm"] and values(argv, "--vllm_mode") == ["colocate"]
    assert values(argv, "--model_name_or_path") == [str(caller["home"] / "models" / "q 7b")]
    assert values(argv, "--image_root") == [str(caller["home"] / "image root")]


@pytest.mark.slow
def test_a_real_cpu_run_from_another_folder_with_spaces(tmp_path, tiny_model_dir):
    """The real trainer, run as a user would from their own folder: every relative path is theirs."""
    home = tmp_path / "my work"
    (home / "pictures dir" / "images").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "images" / "chelsea.jpg", home / "pictures dir" / "images" / "a.jpg")
    shutil.copy(REPO / "examples" / "images" / "degraded" / "chelsea_l3.jpg", home / "pictures dir" / "images" / "b.jpg")
    (home / "my data.json").write_text(json.dumps([
        {"image": "images/a.jpg", "solution": 4.5, "type": "scoring_image"},
        {"image": "images/b.jpg", "solution": 1.5, "type": "scoring_image"}]))
    shutil.copytree(tiny_model_dir, home / "tiny model")
    env = {**os.environ, "PYTHON": sys.executable, "NPROC": "0", "MODEL": "tiny model", "DATA": "my data.json",
           "IMAGE_ROOT": "pictures dir", "OUTPUT": "out dir", "MAX_STEPS": "1", "NUM_GENERATIONS": "2",
           "BATCH": "4", "MAX_COMPLETION": "4", "SAVE_STEPS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    for name in ("VIDEO_ROOT", "RECIPE", "VQRL_HEARTBEAT", "VQRL_RESUME"):
        env.pop(name, None)
    proc = subprocess.run(["bash", str(REPO / "finetune_RL.sh"), "--max_pixels", "3136", "--report_to", "none"],
                          cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (home / "out dir" / "final" / "model.safetensors").exists()
    assert (home / "out dir" / "checkpoint-1").exists() and not (REPO / "out dir").exists()
