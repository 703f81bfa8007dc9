"""`python -m vqrl.learning` (and scripts/learning_check.py): does vqrl's GRPO teach a random tiny model to judge
image quality? Presets, the stages of one check (data, then per seed a warm-up and the GRPO runs), and the runner
that does them in this process or in parallel worker processes.

Stages talk through files under --out only (config.json, task.json, seed<S>/...), so a worker process needs nothing
but the output folder; this module must not hold training logic (that is vqrl.grpo's and the stages' modules').
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from .task import FAMILIES, TaskSpec

# A flag given on the command line wins over its preset's value.
PRESETS = {
    # the CPU test (tests/test_learning.py): one seed, in this process, ~8 minutes on 2 cores, on the exposure pair
    # (darker / brighter: mean luminance fails, the distance from mid-grey does not); what it can show is measured in
    # docs/learning.md ("CPU"): learning there is seed-dependent, the proof is the GPU preset
    "quick": dict(
        device="cpu", threads=1, workers=1, seeds=[0], data_seed=0, families=["brighten", "darken"], train_sources=300,
        heldout_sources=8, test_sources=8, per_source=5, per_source_eval=10, size=112, hidden_size=128, layers=2,
        head_dim=32, vision_hidden_size=32, vision_depth=2, sft_steps=200, sft_lr=2e-3, sft_batch=16,
        steps=100, refine_steps=10, lr=1e-3, lr_schedule="cosine", warmup_steps=10, num_generations=4,
        prompts_per_step=16, temperature=1.0, beta=0.1, entropy_coef=0.02, scale_rewards="group",
        max_completion_length=32, eval_every=10, parallel=0, budget=None,
    ),
    # one H200 (16 cores): 3 seeds x (standard, refine) as 6 processes sharing the GPU, in one device call. The tower
    # (64 x 4), batch (128 prompts, lr scaled by sqrt 2) and adaptive entropy bonus are those of the runs that met
    # the targets with a pretrained tower (--vision_init; docs/learning.md, fifteenth session); GRPO
    # stops at the step budget or when the wall-clock budget says so, leaving time for the final evaluations. Data
    # seed 3: the task was designed on data seed 0; data seeds 1 and 2 had their held-out splits scored by the runs
    # that later choices followed (the tower, the batch, the entropy bonus chosen among four on seed 2's held-out
    # split; docs/learning.md), so the preset confirms on scenes no choice has seen. Its held-out and test splits
    # were read once, by the sixteenth session's confirmation run: a choice made after it needs fresh scenes again
    "gpu": dict(
        device="cuda", threads=2, workers=12, seeds=[0, 1, 2], data_seed=3, families=list(FAMILIES), train_sources=1000,
        heldout_sources=8, test_sources=8, per_source=5, per_source_eval=10, size=112, hidden_size=128, layers=2,
        head_dim=32, vision_hidden_size=64, vision_depth=4, sft_steps=200, sft_lr=2e-3, sft_batch=16,
        steps=300, refine_steps=300, lr=1.4142e-3, lr_schedule="constant_with_warmup", warmup_steps=10,
        num_generations=4, prompts_per_step=128, temperature=1.0, beta=0.1, entropy_coef=0.02, entropy_target=0.15,
        scale_rewards="group", max_completion_length=32, eval_every=20, parallel=6, budget=480,
    ),
}
# --smoke: the same code path at a toy scale (2-3 steps), to check a preset end to end before spending device time
SMOKE = dict(train_sources=12, heldout_sources=6, test_sources=6, per_source=5, per_source_eval=5, sft_steps=3,
             sft_batch=4, steps=3, refine_steps=2, prompts_per_step=2, eval_every=2, warmup_steps=0)
RESERVE_SECONDS = 75  # of --budget, kept for the final `vqrl eval`s and the summary after GRPO stops


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="learning_check", description=__doc__.split("\n\n")[0])
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the CPU test preset (default)")
    preset.add_argument("--gpu", action="store_true", help="one-GPU preset: 3 seeds x 2 trainers in parallel")
    p.add_argument("--smoke", action="store_true", help="the preset's code path at a toy scale (2-3 steps)")
    p.add_argument("--out", default="outputs/learning_check", help="output folder (recreated)")
    p.add_argument("--export", help="also copy the small results (summary, curves, every run's logs and metrics; no "
                                    "images or models) into this folder, e.g. a device call's $OUT")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (model init, warm-up, GRPO sampling)")
    p.add_argument("--trainers", nargs="*", default=["standard", "refine"],
                   help="GRPO runs per seed, each from the seed's warm-up; none: the warm-up only")
    p.add_argument("--parallel", type=int, help="worker processes at once (0: everything in this process)")
    p.add_argument("--budget", type=float, help="wall-clock seconds for the whole check: GRPO runs stop early so "
                                                "that the final evaluations still fit")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--workers", type=int, help="processes for building the data")
    p.add_argument("--reuse_data", help="a data folder an earlier check built with the same task flags (not rebuilt)")
    p.add_argument("--warm_start", help="an earlier warm-up (e.g. <out>/seed0/sft): every seed starts GRPO from it")
    task = p.add_argument_group("task (procedural scenes, see vqrl.learning.task)")
    task.add_argument("--data_seed", type=int, help="the scenes and distortions, the same for every training seed (GPU "
                                                    "preset: 3, whose scenes no design choice has seen)")
    task.add_argument("--families", nargs="+", help=f"distortion families (default {' '.join(FAMILIES)}; quick "
                                                    "preset: brighten darken)")
    for name in ("train_sources", "heldout_sources", "test_sources", "per_source", "per_source_eval", "size"):
        task.add_argument(f"--{name}", type=int)
    model = p.add_argument_group("model and warm-up")
    for name in ("hidden_size", "layers", "head_dim", "vision_hidden_size", "vision_depth", "sft_steps", "sft_batch"):
        model.add_argument(f"--{name}", type=int)
    model.add_argument("--sft_lr", type=float)
    model.add_argument("--vision_init", help="a saved model whose vision tower and merger (output layer zeroed) every "
                                             "seed starts from (docs/learning/feature_probe.py --save)")
    model.add_argument("--sft_targets", default="random", choices=["random", "random_per_image", "mos", "perception"],
                       help="random: the format only (the check) | random_per_image | mos: a supervised reference "
                            "probe | perception: Stage-1, the thought names the distortion and its level, the score "
                            "stays random (for Refine's PD; docs/learning.md) | the merger trains in the warm-up "
                            "for mos and perception")
    grpo = p.add_argument_group("GRPO (flags of vqrl.grpo / TRL)")
    for name in ("steps", "refine_steps", "warmup_steps", "num_generations", "prompts_per_step",
                 "max_completion_length", "eval_every"):
        grpo.add_argument(f"--{name}", type=int)
    for name in ("lr", "temperature", "beta", "entropy_coef"):
        grpo.add_argument(f"--{name}", type=float)
    grpo.add_argument("--entropy_target", type=float,
                      help="TRL's adaptive entropy control: the bonus (at most --entropy_coef) applies only while the "
                           "mean token entropy is at or below this (GPU preset 0.15: off after a format break, whose "
                           "entropy is high); 0: a constant bonus (quick preset)")
    grpo.add_argument("--lr_schedule", choices=["constant_with_warmup", "cosine"])
    grpo.add_argument("--scale_rewards", choices=["group", "batch", "none"])
    grpo.add_argument("--reward_funcs", nargs="+", default=["format", "score_l1"])
    grpo.add_argument("--grpo_arg", action="append", default=[], metavar="KEY=VALUE",
                      help="any other vqrl/TRL GRPO option for every run (repeatable)")
    grpo.add_argument("--no_final_eval", action="store_true", help="skip the full `vqrl eval` of the final models")
    grpo.add_argument("--step_timing", action=argparse.BooleanOptionalAction, default=True,
                      help="log each step's time split (generation, log-probs, rest, between steps) as time/* "
                           "and its median in run.json")
    grpo.add_argument("--profile_step", type=int, help="write a torch.profiler table of this GRPO step to "
                      "<run>/profile.txt (exported)")
    grpo.add_argument("--stability_probe", action=argparse.BooleanOptionalAction, default=True,
                      help="log per step the sampled-vs-scored log-prob gap and the largest token KL "
                           "(vqrl.learning.stability; no extra forward pass)")
    p.add_argument("--stage", choices=["all", "data", "warmup", "grpo"], default="all",
                   help="data: only build the preset's data into OUT/data (for several checks to --reuse_data); "
                        "warmup, grpo: a worker's stage")
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # a worker's seed
    p.add_argument("--trainer", help=argparse.SUPPRESS)  # a worker's trainer
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # a worker's GRPO stop time (time.time())
    args = p.parse_args(argv)
    args.preset = "gpu" if args.gpu else "quick"
    values = dict(PRESETS[args.preset])
    if args.smoke:
        values.update(SMOKE)
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def task_spec(cfg) -> TaskSpec:
    return TaskSpec(families=tuple(cfg.families), train_sources=cfg.train_sources,
                    heldout_sources=cfg.heldout_sources, test_sources=cfg.test_sources, per_source=cfg.per_source,
                    per_source_eval=cfg.per_source_eval, size=cfg.size, seed=cfg.data_seed)


# ---- stages: each reads and writes files under cfg.out only ---------------------------------------------------
def stage_warmup(cfg, seed: int) -> dict:
    from .warmup import make_model, warmup

    out = Path(cfg.out) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.warm_start:
        shutil.copytree(cfg.warm_start, out / "sft")
        info = {"steps": 0, "seconds": 0.0, "warm_start": cfg.warm_start}
        (out / "warmup.json").write_text(json.dumps(info, indent=1))
        return info
    data = Path(cfg.out) / "data"
    model = make_model(out / "model_init", seed=seed, max_pixels=cfg.size * cfg.size, hidden_size=cfg.hidden_size,
                       layers=cfg.layers, head_dim=cfg.head_dim, vision_hidden_size=cfg.vision_hidden_size,
                       vision_depth=cfg.vision_depth, vision_from=cfg.vision_init)
    _, info = warmup(model, data / "train.json", data, out / "sft", seed=seed, steps=cfg.sft_steps, lr=cfg.sft_lr,
                     batch=cfg.sft_batch, targets=cfg.sft_targets,
                     see_image=cfg.sft_targets in ("mos", "perception"),
                     device=cfg.device)
    if cfg.vision_init:
        info["vision_init"] = cfg.vision_init
    print(f"[seed {seed}] warm-up: {info['steps']} SFT steps, loss {info['loss_first']:.3f} -> "
          f"{info['loss_last']:.3f}, {info['seconds']}s", flush=True)
    (out / "warmup.json").write_text(json.dumps(info, indent=1))
    return info


def stage_grpo(cfg, seed: int, trainer: str, deadline: float | None = None) -> dict:
    from .grpo_run import run_grpo

    out = Path(cfg.out) / f"seed{seed}"
    return run_grpo(cfg, trainer, seed, out / "sft", Path(cfg.out) / "data", out / trainer, deadline=deadline)


EXPORTED = ("results.json", "summary.md", "curves.png", "config.json", "data/task.json", "seed*/warmup.json",
            "seed*/*.log", "seed*/*/run.json", "seed*/*/profile.txt", "seed*/*/metrics.jsonl",
            "seed*/*/stability_probe.jsonl", "seed*/*/update_probe.jsonl", "seed*/*/completions_probe.jsonl",
            "seed*/*/eval/*/metrics.json", "seed*/*/eval/*/scatter_*.png")


def export(out: Path, dest: Path) -> None:
    """Copy the check's small artefacts (EXPORTED) from `out` to `dest`, keeping their relative paths."""
    for pattern in EXPORTED:
        for path in sorted(out.glob(pattern)):
            target = dest / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _setup(cfg) -> None:
    import torch

    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible")
    if getattr(cfg, "vision_init", None) and not (Path(cfg.vision_init) / "model.safetensors").is_file():
        raise SystemExit(f"--vision_init {cfg.vision_init}: no model.safetensors there (a saved model is expected)")


def main(argv=None) -> dict | None:
    cfg = parse_args(argv)
    if cfg.stage == "data":
        from .task import build_or_load_task

        task = build_or_load_task(task_spec(cfg), Path(cfg.out) / "data", workers=cfg.workers)
        print(f"data: {task['splits']['train']['records']} train records in {Path(cfg.out) / 'data'}", flush=True)
        return None
    if cfg.stage != "all":  # a worker: one stage of a check whose config.json the parent wrote
        saved = json.loads((Path(cfg.out) / "config.json").read_text())
        cfg = argparse.Namespace(**{**saved, **{k: getattr(cfg, k) for k in ("stage", "seed", "trainer", "deadline")}})
        _setup(cfg)
        if cfg.stage == "warmup":
            stage_warmup(cfg, cfg.seed)
        else:
            stage_grpo(cfg, cfg.seed, cfg.trainer, cfg.deadline)
        return None
    from .report import best_baseline, write_report
    from .task import build_task, load_task

    started = time.time()
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg.started = started
    (out / "config.json").write_text(json.dumps(vars(cfg), indent=1))
    _setup(cfg)
    if cfg.reuse_data:
        task = load_task(cfg.reuse_data, task_spec(cfg))
        (out / "data").symlink_to(Path(cfg.reuse_data).resolve(), target_is_directory=True)
    else:
        task = build_task(task_spec(cfg), out / "data", workers=cfg.workers)
    held, test = (best_baseline(task["baselines"], split) for split in ("heldout", "test"))
    print(f"data: {task['splits']['train']['records']} train / {task['splits']['heldout']['records']} held-out / "
          f"{task['splits']['test']['records']} test records ({time.time() - started:.0f}s); best baseline: held-out "
          f"{held['name']} {held['srcc']:+.3f}, test {test['name']} {test['srcc']:+.3f}", flush=True)
    deadline = started + cfg.budget - RESERVE_SECONDS if cfg.budget else None
    if cfg.parallel:
        from .parallel import run_stages

        failures = run_stages(cfg, deadline)
    else:
        failures = []
        for seed in cfg.seeds:
            stage_warmup(cfg, seed)
            for trainer in cfg.trainers:
                stage_grpo(cfg, seed, trainer, deadline)
    results = write_report(cfg, failures, time.time() - started)
    if cfg.export:
        export(out, Path(cfg.export))
    print("\n" + results["summary_text"])
    print(f"\nwrote {out / 'results.json'}, {out / 'summary.md'} and {out / 'curves.png'}")
    return results


if __name__ == "__main__":
    main()
