"""The learning check's parts that need no training: procedural scenes, the task and its split, the baselines, the
report's targets and the parallel runner's scheduling. Fast (small scenes, fake workers); the training itself is
tests/test_learning.py (slow).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqrl.datagen.scenes import MEAN_LUMINANCE, render_scene, write_scenes
from vqrl.learning import baselines, grpo_run, parallel, report
from vqrl.learning.task import SPLITS, TaskSpec, build_or_load_task, build_task, load_task, source_of

LUMA = np.array([0.299, 0.587, 0.114])


# ---- scenes --------------------------------------------------------------------------------------------------
def test_scene_is_a_function_of_seed_and_index():
    a, b = render_scene(3, 7, 64), render_scene(3, 7, 64)
    assert a.tobytes() == b.tobytes()
    assert render_scene(3, 8, 64).tobytes() != a.tobytes()
    assert render_scene(4, 7, 64).tobytes() != a.tobytes()
    state = np.random.get_state()[1].copy()
    render_scene(0, 0, 32)
    assert (np.random.get_state()[1] == state).all(), "a scene touched numpy's global random state"


def test_pristine_scenes_are_well_exposed_and_not_flat():
    # the exposure and contrast families are judged against what every pristine scene shares (docs/learning.md)
    for index in range(40):
        y = np.asarray(render_scene(0, index, 112), np.float64) @ LUMA
        assert MEAN_LUMINANCE[0] - 1 <= y.mean() <= MEAN_LUMINANCE[1] + 1, (index, y.mean())
        lo, hi = np.percentile(y, [1, 99])
        assert hi - lo >= 120, (index, lo, hi)


def test_write_scenes_does_not_depend_on_workers(tmp_path):
    one = write_scenes(tmp_path / "one", 0, range(5), 48, prefix="s")
    two = write_scenes(tmp_path / "two", 0, range(5), 48, prefix="s", workers=2)
    assert [p.name for p in one] == [p.name for p in two] == [f"s{i:04d}.png" for i in range(5)]
    assert all(Image.open(a).tobytes() == Image.open(b).tobytes() for a, b in zip(one, two))


# ---- task ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    spec = TaskSpec(train_sources=10, heldout_sources=6, test_sources=6, per_source=5, per_source_eval=5, size=56)
    out = tmp_path_factory.mktemp("task") / "data"
    return spec, out, build_task(spec, out)


def test_splits_hold_disjoint_scenes(task):
    spec, out, summary = task
    sources = {}
    for split in SPLITS:
        records = json.loads((out / f"{split}.json").read_text())
        sources[split] = {source_of(r["sample_id"]) for r in records}
        assert all(s.startswith(f"{split}_") for s in sources[split])
        per = spec.per_source if split == "train" else spec.per_source_eval
        assert len(records) == len(sources[split]) * (per + 1) == summary["splits"][split]["records"]
        assert all((out / r["image"]).is_file() and "question" not in r for r in records)
        assert {r.get("distortion") for r in records} - {None} <= set(spec.families)
    assert len(sources["heldout"]) == 6 and len(sources["test"]) == 6
    assert not (sources["train"] & sources["heldout"] or sources["train"] & sources["test"]
                or sources["heldout"] & sources["test"])


def test_task_reports_baselines_fitted_on_train(task):
    _, out, summary = task
    b = summary["baselines"]
    assert set(b["baselines"]) == {"mean_luminance", "contrast", "sharpness"}
    assert b["best_heldout"]["srcc"] == max(v["heldout"] for v in b["baselines"].values())
    assert load_task(out) == summary


def test_load_task_refuses_data_built_from_another_spec(task):
    spec, out, _ = task
    with pytest.raises(ValueError, match="was built from"):
        load_task(out, TaskSpec(train_sources=11, heldout_sources=6, test_sources=6, per_source=5,
                                per_source_eval=5, size=56))


def test_build_or_load_task_reuses_only_a_folder_of_the_same_spec(task):
    spec, out, summary = task
    stamp = (out / "train.json").stat().st_mtime_ns
    assert build_or_load_task(spec, out) == summary
    assert (out / "train.json").stat().st_mtime_ns == stamp, "the same spec must reuse, not rebuild"
    with pytest.raises(ValueError, match="was built from"):  # a probe's --size or --train_sources changed
        build_or_load_task(TaskSpec(train_sources=10, heldout_sources=6, test_sources=6, per_source=5,
                                    per_source_eval=5, size=64), out)


# ---- baselines -------------------------------------------------------------------------------------------------
def test_statistics_follow_their_distortions():
    y = np.asarray(render_scene(0, 1, 96), np.float32) @ baselines.LUMA
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(y, 2)
    noisy = y + np.random.default_rng(0).normal(0, 20, y.shape)
    assert baselines.sharpness(blurred) < baselines.sharpness(y) < baselines.sharpness(noisy)
    assert baselines.contrast(128 + 0.5 * (y - 128)) < baselines.contrast(y)
    assert baselines.mean_luminance(y * 0.5) < baselines.mean_luminance(y)


def test_baseline_sign_comes_from_train_not_from_the_scored_split():
    mos = [1.0, 2.0, 3.0, 4.0, 5.0]
    train = ({"mean_luminance": [5, 4, 3, 2, 1], "contrast": [1, 2, 3, 4, 5], "sharpness": [3, 1, 4, 1, 5]}, mos)
    # on the held-out split luminance runs the other way: a baseline fitted there would score +1, ours must score -1
    heldout = ({"mean_luminance": [1, 2, 3, 4, 5], "contrast": [1, 2, 3, 4, 5], "sharpness": [1, 1, 1, 1, 1]}, mos)
    r = baselines.fit_and_score(train, {"heldout": heldout})
    assert r["baselines"]["mean_luminance"]["sign"] == -1.0
    assert r["baselines"]["mean_luminance"]["heldout"] == pytest.approx(-1.0)
    assert r["baselines"]["contrast"]["heldout"] == pytest.approx(1.0)
    assert r["best_heldout"] == {"name": "contrast", "srcc": pytest.approx(1.0)}


def test_two_sided_baseline_fits_its_centre_on_train():
    # quality falls on both sides of 10: a signed statistic cannot rank it, the distance from 10 can
    train = ({"mean_luminance": [0, 5, 10, 15, 20] * 4, "contrast": [1.0] * 20, "sharpness": list(range(20))},
             [1.0, 3.0, 5.0, 3.0, 1.0] * 4)
    heldout = ({"mean_luminance": [2, 8, 10, 13, 19], "contrast": [1.0] * 5, "sharpness": [1, 2, 3, 4, 5]},
               [1.5, 4.0, 5.0, 3.5, 1.2])
    r = baselines.fit_and_score(train, {"heldout": heldout})
    assert abs(r["baselines"]["mean_luminance"]["heldout"]) < 0.5
    assert r["two_sided"]["mean_luminance"]["centre"] == pytest.approx(10.0, abs=2.5)
    assert r["two_sided"]["mean_luminance"]["heldout"] == pytest.approx(1.0)
    assert r["best_two_sided_heldout"]["name"] == "mean_luminance"


# ---- report: targets ---------------------------------------------------------------------------------------------
def _results(ends: dict[tuple[int, str], float], kl: float = 0.5) -> dict:
    best = {"best_heldout": {"name": "contrast", "srcc": 0.3}, "best_test": {"name": "contrast", "srcc": 0.2}}
    task = {"baselines": {"baselines": {"contrast": {"heldout": 0.3, "test": 0.2}}, **best}}
    seeds = {}
    for (seed, trainer), end in ends.items():
        seeds.setdefault(str(seed), {"warmup": {}, "runs": {}})["runs"][trainer] = {
            "steps": 100, "steps_planned": 100, "srcc_start": 0.0, "srcc_end": end, "greedy_srcc_end": end - 0.1,
            "kl_max": kl, "final_eval": {"test": {"expected": {"srcc": end - 0.05}, "greedy": {"srcc": end - 0.2}}}}
    return {"task": task, "seeds": seeds}


def test_targets_must_hold_on_every_seed():
    good = {(0, "standard"): 0.85, (1, "standard"): 0.9, (0, "refine"): 0.82, (1, "refine"): 0.8}
    agg = report.aggregate(report.rows(_results(good)))
    assert all(agg["standard"]["targets_met"].values())
    assert agg["standard"]["srcc_end_mean"] == pytest.approx(0.875) and agg["standard"]["srcc_end_worst"] == 0.85
    assert agg["refine"]["within_tolerance_of_standard"] is False  # seed 1: 0.80 < 0.90 - 0.05
    one_bad = dict(good)
    one_bad[(1, "standard")] = 0.79
    met = report.aggregate(report.rows(_results(one_bad)))["standard"]["targets_met"]
    assert met["held-out SRCC >= 0.8"] is False and met["held-out SRCC >= best baseline + 0.3"] is True
    spiky = report.aggregate(report.rows(_results(good, kl=11.0)))["standard"]["targets_met"]
    assert spiky["step KL (TRL's `kl`, mean over tokens) <= 10 at every step"] is False
    short = _results(good)
    short["seeds"]["0"]["runs"]["refine"]["steps_planned"] = 10  # a shorter Refine run is not judged against standard
    assert "within_tolerance_of_standard" not in report.aggregate(report.rows(short))["refine"]


def test_a_planned_seed_without_a_run_fails_the_targets_and_is_named():
    """Targets hold on every PLANNED seed: a seed whose run failed or never started cannot pass by its absence."""
    good = _results({(0, "standard"): 0.9})
    assert all(report.aggregate(report.rows(good), {"seeds": [0], "trainers": ["standard"]})["standard"]
               ["targets_met"].values())
    agg = report.aggregate(report.rows(good), {"seeds": [0, 1, 2], "trainers": ["standard"]})
    assert not any(agg["standard"]["targets_met"].values())
    text = report.markdown(report.rows(good), agg, good["task"])
    assert "1 of 3 planned seeds have a run" in text
    none = report.aggregate([], {"seeds": [0, 1], "trainers": ["standard"]})  # every run failed: still judged
    assert none["standard"]["seeds"] == 0 and not any(none["standard"]["targets_met"].values())


def test_greedy_target_needs_parsed_answers_and_a_nan_kl_fails():
    results = _results({(0, "standard"): 0.9})
    run = results["seeds"]["0"]["runs"]["standard"]
    run["greedy_parse_fail_end"] = 0.5  # SRCC 0.8 over half of the answers: not a greedy ranking of the split
    met = report.aggregate(report.rows(results))["standard"]["targets_met"]
    assert met["greedy SRCC >= 0.6 with <= 5% unparsed"] is False and met["held-out SRCC >= 0.8"] is True
    assert "(50% unparsed)" in report.markdown(report.rows(results), report.aggregate(report.rows(results)),
                                               results["task"])
    assert grpo_run.stability([{"step": 1, "kl": 0.1}, {"step": 2, "kl": math.nan}, {"step": 3, "kl": 0.2}]) \
        ["nonfinite_steps"] == 1
    run["greedy_parse_fail_end"], run["nonfinite_steps"] = 0.0, 1
    met = report.aggregate(report.rows(results))["standard"]["targets_met"]
    assert met["step KL (TRL's `kl`, mean over tokens) <= 10 at every step"] is False


def test_the_best_baseline_is_the_best_signed_or_two_sided_statistic():
    results = _results({(0, "standard"): 0.6})
    results["task"]["baselines"]["best_two_sided_heldout"] = {"name": "sharpness", "srcc": 0.45}
    row = report.rows(results)[0]
    assert (row["baseline"], row["baseline_name"]) == (0.45, "sharpness, two-sided")
    assert row["over_baseline"] == pytest.approx(0.15)
    results["task"]["baselines"]["best_two_sided_heldout"]["srcc"] = 0.1  # below the signed 0.3: the signed stands
    assert report.rows(results)[0]["baseline_name"] == "contrast"


def test_verdict_means_the_last_three_distinct_evaluations():
    points = [{"step": s, "expected_srcc": v, "greedy_srcc": g, "greedy_parse_fail_rate": 0.0}
              for s, v, g in ((0, 0.0, 0.0), (20, 0.2, 0.1), (40, 0.4, 0.3), (60, 0.6, None), (61, 0.9, None))]
    v = grpo_run.verdict(points, min_gap=10)
    assert v["verdict_steps"] == [20, 40, 61]  # step 61 (the budget's stop) replaces step 60
    assert v["srcc_end"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert v["greedy_srcc_end"] == pytest.approx((0.1 + 0.3 + 0.0) / 3)  # no parsed answer: ranks nothing


def test_perception_accuracy_is_printed_when_measured_even_at_zero():
    # a perception run whose thoughts all name the wrong distortion must say 0 %, not stay silent
    results = _results({(0, "standard"): 0.5, (1, "standard"): 0.5})
    for seed, share in (("0", 0.0), ("1", None)):  # seed 1: a template warm-up, nothing to score
        point = {"greedy_think_is_template": 0.0 if share is not None else 1.0}
        if share is not None:
            point |= {"greedy_think_names_distortion": share, "greedy_think_names_level": share}
        results["seeds"][seed]["runs"]["standard"]["points"] = [{}, point]
    text = report.markdown(report.rows(results), report.aggregate(report.rows(results)), results["task"])
    lines = [line for line in text.splitlines() if line.startswith("Thinking")]
    assert "naming the distortion 0%, its level too 0%" in lines[0] and "naming" not in lines[1]


def test_markdown_has_a_row_per_seed_and_the_mean_and_worst():
    text = report.markdown(*(lambda r: (report.rows(r), report.aggregate(report.rows(r)), r["task"]))(
        _results({(0, "standard"): 0.85, (1, "standard"): 0.6})))
    assert text.count("| standard |") == 4 and "| worst | standard |" in text and "+0.60" in text


# ---- parallel runner -------------------------------------------------------------------------------------------
def _fake_worker(tmp_path: Path, fail_warmup_seed: int):
    """A worker that records when it ran; the warm-up of one seed fails."""
    def command(cfg, stage, seed, trainer, deadline):
        code = (f"import json,time,sys; t=time.time(); time.sleep(0.3); "
                f"open({str(tmp_path / 'runs.jsonl')!r},'a').write(json.dumps(dict(stage={stage!r},seed={seed},"
                f"trainer={trainer!r},start=t,end=time.time()))+'\\n'); "
                f"sys.exit(3 if {stage!r}=='warmup' and {seed}=={fail_warmup_seed} else 0)")
        return [sys.executable, "-c", code]
    return command


def test_parallel_runs_grpo_after_its_warmup_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "worker_command", _fake_worker(tmp_path, fail_warmup_seed=1))
    cfg = argparse.Namespace(out=str(tmp_path), seeds=[0, 1, 2], trainers=["standard", "refine"], parallel=3,
                             threads=1, budget=None, started=time.time())
    failures = parallel.run_stages(cfg, deadline=None)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert failures == [{"stage": "warmup", "seed": 1, "trainer": None, "reason": "exit 3",
                         "log": str(tmp_path / "seed1" / "warmup.log")}]
    assert sorted((r["stage"], r["seed"], r["trainer"]) for r in runs) == sorted(
        [("warmup", s, None) for s in (0, 1, 2)] + [("grpo", s, t) for s in (0, 2) for t in ("standard", "refine")])
    for r in runs:
        if r["stage"] == "grpo":
            warm = next(w for w in runs if w["stage"] == "warmup" and w["seed"] == r["seed"])
            assert r["start"] >= warm["end"]
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    assert max(np.cumsum([e for _, e in events])) <= 3


def test_jobs_the_budget_never_started_are_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "worker_command", _fake_worker(tmp_path, fail_warmup_seed=-1))
    monkeypatch.setattr(parallel, "STOP_BEFORE_END", 0)
    cfg = argparse.Namespace(out=str(tmp_path), seeds=[0, 1, 2], trainers=["standard"], parallel=1, threads=1,
                             budget=0.5, started=time.time())
    failures = parallel.run_stages(cfg, deadline=None)
    reasons = {(f["stage"], f["seed"]): f["reason"] for f in failures}
    assert reasons[("warmup", 0)] == "stopped at the end of --budget"
    assert reasons[("warmup", 1)] == reasons[("warmup", 2)] == "not started before the end of --budget"
