"""The learning check on the CPU: GRPO teaches a randomly initialised model to rank image quality on photos it never
saw. Runs `scripts/learning_check.py --quick` as a user would (data, format-only warm-up, standard then refine, full
`vqrl eval` of the final models) and reads its results.json. Slow: several minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("learning") / "check"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "learning_check.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "curves.png").stat().st_size > 10_000
    return json.loads((out / "results.json").read_text())


def test_warmup_teaches_the_format_and_no_quality(results):
    start = results["runs"]["standard"]["points"][0]
    assert start["step"] == 0
    assert abs(start["expected_srcc"]) < 0.3, "the random-score warm-up already ranks quality"
    assert start["greedy_parse_fail_rate"] <= 0.1, "the warm-up did not teach the answer format"


def test_standard_grpo_raises_heldout_srcc(results):
    run = results["runs"]["standard"]
    assert run["srcc_gain"] >= 0.3, f"held-out SRCC {run['srcc_start']:.3f} -> {run['srcc_end']:.3f}"
    assert run["srcc_end"] >= 0.4
    # the full `vqrl eval` of the saved final model agrees with the in-training evaluation's direction
    assert run["final_eval"]["expected"]["srcc"] > run["srcc_start"] + 0.2


def test_refine_is_reported_beside_it(results):
    run = results["runs"]["refine"]
    assert run["points"][0]["step"] == 0 and run["points"][-1]["step"] == run["steps"]
    assert run["srcc_end"] is not None and "expected" in run["final_eval"]
