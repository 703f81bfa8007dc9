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


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_run_logs_each_step_once_in_both_files(tmp_path):
    """A run that logged steps 1-5, crashed and resumed from checkpoint-3 redoes steps 4-5: rows 4-5 of the crashed
    attempt go, rank by rank, and metrics.jsonl likewise."""
    from vqrl.training.metrics import MetricsLogger

    resources, metrics = ResourceLogger(str(tmp_path)), MetricsLogger(str(tmp_path))

    def attempt(first_step, last_step, ranks=(0, 1)):
        for rank in ranks:
            args = SimpleNamespace(process_index=rank)
            state = SimpleNamespace(global_step=first_step - 1, is_world_process_zero=rank == 0, epoch=0.0)
            resources.on_train_begin(args, state, None)
            metrics.on_train_begin(args, state, None)
            for step in range(first_step, last_step + 1):
                resources.on_step_begin(args, state, None)
                state.global_step = step
                resources.on_step_end(args, state, None)
                metrics.on_log(args, state, None, logs={"loss": float(step), "attempt": float(first_step)})

    attempt(1, 5)
    attempt(4, 7)  # resumed from checkpoint-3
    for rank in (0, 1):
        assert [r["step"] for r in _rows(tmp_path / f"resources_rank{rank}.jsonl")] == list(range(1, 8))
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert [r["attempt"] for r in rows] == [1.0] * 3 + [4.0] * 4  # the redone steps are the new attempt's
