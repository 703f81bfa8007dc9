"""The learning check's recorded GPU proofs (docs/learning/*/results.json.gz) say what the README and docs/learning.md
quote: the table and verdict recomputed from each export's raw evaluations by the report's own code equal the
recorded ones, and the README's mean and worst seed are those numbers. A rerun that changes an export, or an edit
of the README's figures, cannot leave the other behind."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from vqrl.learning.check import parse_args
from vqrl.learning.grpo_run import verdict
from vqrl.learning.report import aggregate, rows

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "learning"
README = (ROOT / "README.md").read_text()


def _load(name: str) -> dict:
    return json.loads(gzip.open(RECORDS / name / "results.json.gz").read())


def _readme_sentence(fragment: str) -> str:
    """The README's learning paragraph, whitespace folded, from `fragment` to the next full stop."""
    text = " ".join(README.split())
    start = text.index(fragment)
    return text[start:text.index(". ", start)]


@pytest.mark.parametrize("name", ["h200_seed3", "h200_variants/adaptive"])
def test_the_recorded_table_is_what_the_report_computes_from_the_evaluations(name):
    results = _load(name)
    for seed, entry in results["seeds"].items():
        for run in entry["runs"].values():
            again = verdict(run["points"], min_gap=results["config"]["eval_every"] / 2)
            assert again["srcc_end"] == pytest.approx(run["srcc_end"]), (name, seed)
            assert again["greedy_srcc_end"] == pytest.approx(run["greedy_srcc_end"]), (name, seed)
    table = rows(results)
    for now, recorded in zip(table, results["table"], strict=True):
        # a row key added after the run (the perception diagnostics) is empty for it
        assert {k: now[k] for k in recorded} == recorded and not any(now[k] for k in now.keys() - recorded.keys())
    again = aggregate(table, {"seeds": results["config"]["seeds"], "trainers": ["standard"]})["standard"]
    recorded = results["aggregate"]["standard"]
    assert again.keys() == recorded.keys() and again["targets_met"] == recorded["targets_met"]
    for key, value in recorded.items():  # a mean summed in another order differs in its last bit
        assert again[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_the_confirmation_ran_the_gpu_preset_on_its_fresh_data_seed():
    # the run the README quotes as "on fresh scenes": the preset as it is now, every seed planned, every target met
    results = _load("h200_seed3")
    cfg = results["config"]
    preset = parse_args(["--gpu"])
    for key in ("data_seed", "families", "train_sources", "vision_hidden_size", "vision_depth", "prompts_per_step",
                "lr", "beta", "entropy_coef", "entropy_target", "num_generations", "sft_targets"):
        assert cfg[key] == getattr(preset, key), key
    assert cfg["seeds"] == [0, 1, 2] and cfg["trainers"] == ["standard"] and cfg["vision_init"]
    agg = results["aggregate"]["standard"]
    assert agg["seeds"] == agg["seeds_planned"] == 3 and all(agg["targets_met"].values())


@pytest.mark.parametrize("name, fragment", [
    ("h200_seed3", "the held-out SRCC is **mean"),
    ("h200_variants/adaptive", "the same preset reached"),
])
def test_the_readme_quotes_the_recorded_mean_and_worst_seed(name, fragment):
    agg = _load(name)["aggregate"]["standard"]
    numbers = re.findall(r"\d\.\d\d", _readme_sentence(fragment))
    assert numbers[:2] == [f"{agg['srcc_end_mean']:.2f}", f"{agg['srcc_end_worst']:.2f}"], numbers
