"""Per-rank resource rows: one per step, in the rank's own file, each step's own wall time."""

import json
import time
from types import SimpleNamespace

from vqrl.training.metrics import ResourceLogger


def test_resource_logger_writes_one_row_per_step_per_rank(tmp_path):
    logger = ResourceLogger(str(tmp_path))
    state = SimpleNamespace(global_step=0)
    for rank in (0, 1):
        args = SimpleNamespace(process_index=rank)
        for step in (1, 2):
            logger.on_step_begin(args, state, None)
            time.sleep(0.02 * step)
            state.global_step = step
            logger.on_step_end(args, state, None)
        state.global_step = 0
    for rank in (0, 1):
        rows = [json.loads(line) for line in (tmp_path / f"resources_rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        assert 0.02 <= rows[0]["step_seconds"] < rows[1]["step_seconds"]  # per step, not cumulative
        assert "peak_allocated_gb" not in rows[0]  # no GPU here: no made-up memory figure


def test_resource_logger_ignores_a_step_end_without_a_begin(tmp_path):
    ResourceLogger(str(tmp_path)).on_step_end(SimpleNamespace(process_index=0), SimpleNamespace(global_step=3), None)
    assert not list(tmp_path.iterdir())
