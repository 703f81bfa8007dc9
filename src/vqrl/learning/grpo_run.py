"""One GRPO run of the learning check: vqrl's trainer from the warm start, the held-out split scored every few
steps, every logged step kept (reward, KL, loss, entropy), then the full `vqrl eval` of the final model on the
held-out and the test split.

It drives `vqrl.grpo.build_trainer` with ordinary flags and owns no training logic; the test split is scored only
once, after training.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

from ..training import saved_settings
from ..training.step_timing import StepTimer, instrument, profile_step
from .evaluate import SplitScorer, vqrl_eval
from .stability import UpdateProbe, probing

LAST_EVALS = 3  # a run's result: the mean held-out SRCC of its last three evaluations (one lucky point cannot pass)
LOGGED = ("reward", "reward_std", "kl", "loss", "entropy", "grad_norm", "completions/mean_length",
          "completions/clipped_ratio", "frac_reward_zero_std", "refine/p_think", "refine/p_nothink",
          "refine/frac_earning_pd", "probe/sampled_minus_scored_max", "probe/sampled_scored_abs_max",
          "probe/scored_logp_min", "probe/kl_token_max")


def grpo_flags(cfg, trainer: str, start: Path, data: Path, out: Path, seed: int) -> list[str]:
    steps = cfg.steps if trainer == "standard" else cfg.refine_steps
    values = {
        "trainer": trainer, "model_name_or_path": str(start), "output_dir": str(out), "image_root": str(data),
        "think": "true", "reward_funcs": list(cfg.reward_funcs), "max_steps": steps, "learning_rate": cfg.lr,
        "lr_scheduler_type": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "per_device_train_batch_size": cfg.prompts_per_step * cfg.num_generations,
        "num_generations": cfg.num_generations, "temperature": cfg.temperature, "beta": cfg.beta,
        "scale_rewards": cfg.scale_rewards, "entropy_coef": cfg.entropy_coef,
        "max_completion_length": cfg.max_completion_length, "max_pixels": cfg.size * cfg.size,
        "freeze_vision_tower": "true", "train_merger": "true", "gradient_checkpointing": "false",
        "logging_steps": 1, "report_to": "none", "save_strategy": "no", "seed": seed, "data_seed": seed,
        "use_cpu": "true" if cfg.device == "cpu" else "false", "bf16": "false", "dtype": "float32",
        "heartbeat": "false", "disable_tqdm": "true", "log_completions": "false",
        # a 2-layer model decodes 32 tokens in a fraction of a second: compiling its decode step costs more than that
        "compiled_generation": "false",
    }
    if getattr(cfg, "entropy_target", None):  # the bonus only while entropy is low (docs/learning.md, Stability)
        values.update(use_adaptive_entropy="true", entropy_target=cfg.entropy_target, entropy_coef_max=cfg.entropy_coef)
    for item in cfg.grpo_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--grpo_arg {item!r}: expected KEY=VALUE")
        values[key.lstrip("-")] = value
    argv = ["--data_files", str(data / "train.json")]
    for key, value in values.items():
        argv += [f"--{key}", *map(str, value)] if isinstance(value, (list, tuple)) else [f"--{key}", str(value)]
    return argv


def run_grpo(cfg, trainer_name: str, seed: int, start: Path, data: Path, out: Path,
             deadline: float | None = None) -> dict:
    """Train, evaluating the held-out split at step 0, every cfg.eval_every steps and at the last step; stop early
    (and say so) at `deadline` (time.time()). Writes `<out>/run.json` and returns it."""
    from transformers import PrinterCallback, TrainerCallback, set_seed

    from ..grpo import build_trainer, parse

    started = time.perf_counter()
    set_seed(seed)
    args, model_args = parse(grpo_flags(cfg, trainer_name, start, data, out, seed))
    with probing() if cfg.stability_probe else nullcontext():
        trainer = build_trainer(args, model_args)
    if cfg.stability_probe:
        trainer.add_callback(UpdateProbe(trainer))
    scorer = SplitScorer(data / "heldout.json", data, trainer.processing_class, cfg.max_completion_length,
                         perception=cfg.sft_targets == "perception")
    points, logs = [], []
    stopped = {"early": False}
    timer = None
    if getattr(cfg, "step_timing", True):  # where a step's time goes (GPU synced at each phase boundary)
        timer = StepTimer()
        instrument(trainer, timer)  # before Curves: the step's timer stops before the evaluation runs
    if getattr(cfg, "profile_step", None):
        profile_step(trainer, cfg.profile_step, str(out / "profile.txt"))

    class Curves(TrainerCallback):
        def _eval(self, state, model):
            t = time.perf_counter()
            ev = scorer(model)
            p = {"step": state.global_step, "srcc": ev["expected"]["srcc"], "plcc": ev["expected"]["plcc"]}
            p.update({f"{mode}_{k}": v for mode, m in ev.items() for k, v in m.items()})
            p["eval_seconds"] = round(time.perf_counter() - t, 2)
            p["elapsed"] = round(time.perf_counter() - started, 1)
            points.append(p)
            last = logs[-1] if logs else {}
            print(f"[seed {seed} {trainer_name}] step {p['step']:>4}  held-out srcc {_fmt(p['expected_srcc'])} "
                  f"(expected) {_fmt(p['greedy_srcc'])} (greedy)  reward {_fmt(last.get('reward'))}  "
                  f"kl {_fmt(last.get('kl'))}  {p['elapsed']:.0f}s", flush=True)

        def on_train_begin(self, a, state, control, model=None, **kw):
            self._eval(state, model)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                row = {"step": state.global_step}
                row.update({k: logs[k] for k in LOGGED if k in logs})
                row.update({k: v for k, v in logs.items() if k.startswith("probe/update_")})
                row.update({k.split("/")[1]: v for k, v in logs.items() if k.startswith("rewards/") and
                            k.endswith("/mean")})
                if timer is not None and timer.steps:
                    row.update({f"time/{k}": round(v, 4) for k, v in timer.steps[-1].items()})
                logs_list.append(row)

        def on_step_end(self, a, state, control, model=None, **kw):
            if deadline is not None and time.time() > deadline:
                control.should_training_stop = True
                stopped["early"] = True
            if (state.global_step % cfg.eval_every == 0 or state.global_step == state.max_steps
                    or control.should_training_stop):
                self._eval(state, model)

    logs_list = logs
    trainer.remove_callback(PrinterCallback)  # every step's full log dict: kept in metrics.jsonl and run.json instead
    trainer.add_callback(Curves())
    trainer.train()
    final = out / "final"
    trainer.save_model(str(final))
    trainer.processing_class.save_pretrained(str(final))
    # the final `vqrl eval` reads what it trained with
    saved_settings.write(final, saved_settings.of_config(trainer.args))
    train_seconds = round(time.perf_counter() - started, 1)
    del trainer
    for i, p in enumerate(points):  # reward of a point: mean over the rollouts since the previous point
        p.update(_mean_since(logs, points[i - 1]["step"] if i else 0, p["step"] if i else 1))
    run = {"trainer": trainer_name, "seed": seed, "steps_planned": args.max_steps,
           "steps": points[-1]["step"] if points else 0, "stopped_by_deadline": stopped["early"],
           "train_seconds": train_seconds, "points": points, "train_log": logs, "final_model": str(final),
           "step_seconds_median": step_seconds(logs), **verdict(points, min_gap=cfg.eval_every / 2),
           **stability(logs)}
    if not cfg.no_final_eval:
        run["final_eval"] = {split: vqrl_eval(final, data / f"{split}.json", data, out / "eval", device=cfg.device,
                                              max_new_tokens=cfg.max_completion_length)
                             for split in ("heldout", "test")}
    run["seconds"] = round(time.perf_counter() - started, 1)
    (out / "run.json").write_text(json.dumps(run, indent=1))
    return run


def verdict(points: list[dict], min_gap: float = 0) -> dict:
    """Held-out SRCC after the warm-up (the first point), at the end (mean of the last LAST_EVALS points after it)
    and the gain; the same for greedy decoding.

    An evaluation less than `min_gap` steps after the previous one (the extra one when the wall-clock budget stops a
    run just after a scheduled evaluation) replaces it, so the mean is not of two near-identical models. An
    evaluation whose answers did not parse at all (SRCC None) counts as 0: a model that gives no score ranks nothing.
    The greedy parse-failure rate over the same points is reported beside it (the SRCC is over parsed answers)."""
    tail = []
    for p in points[1:]:
        if tail and p["step"] - tail[-1]["step"] < min_gap:
            tail[-1] = p
        else:
            tail.append(p)
    tail = tail[-LAST_EVALS:]
    out = {}
    for key, name in (("expected_srcc", "srcc"), ("greedy_srcc", "greedy_srcc")):
        start = points[0].get(key) if points else None
        end = sum(p.get(key) or 0.0 for p in tail) / len(tail) if tail else None
        out[f"{name}_start"], out[f"{name}_end"] = start, end
        out[f"{name}_gain"] = None if start is None or end is None else end - start
    fails = [p["greedy_parse_fail_rate"] for p in tail if p.get("greedy_parse_fail_rate") is not None]
    out["greedy_parse_fail_end"] = sum(fails) / len(fails) if fails else None
    out["verdict_steps"] = [p["step"] for p in tail]
    return out


def stability(logs: list[dict]) -> dict:
    """The largest logged KL (TRL's `kl`: the mean over a step's completion tokens) and loss, and where, with the
    number of steps where either was not finite (a NaN must fail the check, not vanish from a max); with the probe,
    the largest single-token KL and sampled-vs-scored log-prob gaps (vqrl.learning.stability)."""
    def finite(key):
        return [(r[key], r["step"]) for r in logs if r.get(key) is not None and math.isfinite(r[key])]

    def peak(key):
        rows = finite(key)
        return max(rows) if rows else (None, None)

    kl, kl_step = peak("kl")
    return {"kl_max": kl, "kl_max_step": kl_step,
            "abs_loss_max": max((abs(v) for v, _ in finite("loss")), default=None),
            "nonfinite_steps": sum(1 for r in logs if any(r.get(k) is not None and not math.isfinite(r[k])
                                                          for k in ("kl", "loss"))),
            "kl_token_max": peak("probe/kl_token_max")[0],
            "sampled_minus_scored_max": peak("probe/sampled_minus_scored_max")[0],
            "sampled_scored_abs_max": peak("probe/sampled_scored_abs_max")[0]}


def step_seconds(logs: list[dict]) -> dict:
    """Median seconds per step and per phase (generation, no-grad log-probs, PD, the rest; `between`: outside the
    step, e.g. data loading and evaluations) over the logged steps after the first (which pays one-time costs)."""
    import statistics

    rows = [r for r in logs[1:] if "time/step" in r]
    keys = sorted({k for r in rows for k in r if k.startswith("time/")})
    return {k.split("/", 1)[1]: round(statistics.median(r[k] for r in rows if k in r), 4) for k in keys}


def _mean_since(logs: list[dict], after: int, upto: int) -> dict:
    rows = [r for r in logs if after < r["step"] <= upto]
    keys = sorted({k for r in rows for k in r if k != "step"})
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in keys}


def _fmt(x) -> str:
    return "  -  " if x is None else f"{x:+.3f}"
