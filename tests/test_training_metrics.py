"""Per-rank resource rows: one per step, in the rank's own file, each step's own wall time; the curves drawn at the
end of training: every logged reward and completion length, on any machine."""

import json
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

from vqrl.training import metrics as M
from vqrl.training.metrics import ResourceLogger, plot_curves


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


def test_resource_rows_keep_millisecond_times(tmp_path, monkeypatch):
    clock = iter([100.0, 100.12345])
    monkeypatch.setattr(M, "time", SimpleNamespace(perf_counter=lambda: next(clock), time=lambda: 1_700_000_000.98765))
    logger, args, state = ResourceLogger(str(tmp_path)), SimpleNamespace(process_index=0), SimpleNamespace(global_step=1)
    logger.on_step_begin(args, state, None)
    logger.on_step_end(args, state, None)
    (row,) = _rows(tmp_path / "resources_rank0.jsonl")
    assert row["step_seconds"] == 0.123 and row["time"] == 1_700_000_000.988


def _write_metrics(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_curves_plot_every_reward_and_the_completion_lengths_that_were_logged(tmp_path, monkeypatch):
    import matplotlib.figure

    rows = [{"step": 1, "reward": 1.0, "rewards/fmt/mean": 0.5, "completions/mean_length": 10.0},
            {"step": 2, "loss": 0.3},  # a row without a reward (e.g. the train summary) is not a point
            {"step": 3, "reward": 2.0, "rewards/fmt/mean": 1.0, "rewards/acc/mean": 0.25,
             "completions/mean_length": 12.0, "completions/max_length": 20.0}]
    figures, savefig = [], matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    png = tmp_path / "curves.png"
    assert plot_curves(_write_metrics(tmp_path / "metrics.jsonl", rows), str(png)) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rewards, lengths = figures[0].axes

    def lines(ax):
        return {line.get_label(): ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
                for line in ax.get_lines()}

    got = lines(rewards)
    assert set(got) == {"reward (weighted sum)", "fmt", "acc"}
    assert got["reward (weighted sum)"] == ([1, 3], [1.0, 2.0]) and got["fmt"] == ([1, 3], [0.5, 1.0])
    assert math.isnan(got["acc"][1][0]) and got["acc"][1][1] == 0.25
    got = lines(lengths)
    assert set(got) == {"mean", "max"}  # min was never logged: no empty line for it
    assert got["mean"] == ([1, 3], [10.0, 12.0])
    assert math.isnan(got["max"][1][0]) and got["max"][1][1] == 20.0


def test_no_curves_without_a_reward_row(tmp_path):
    png = tmp_path / "curves.png"
    assert plot_curves(_write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 0.3}]), str(png)) is None
    assert plot_curves(str(tmp_path / "missing.jsonl"), str(png)) is None
    assert not png.exists()


def test_curves_are_written_whatever_backend_the_machine_configures(tmp_path):
    """A training machine's matplotlibrc or MPLBACKEND may name an interactive backend that cannot start there (no
    display); the curves are still written (plot_curves draws with Agg) and the end of training does not crash. The
    stand-in backend fails to load as such a backend does."""
    (tmp_path / "gui_backend.py").write_text('raise ImportError("this backend needs a display")\n')
    metrics = _write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "reward": 1.0}, {"step": 2, "reward": 2.0}])
    png = tmp_path / "curves.png"
    env = {**os.environ, "MPLBACKEND": "module://gui_backend",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from vqrl.training.metrics import plot_curves; plot_curves(sys.argv[1], sys.argv[2])"
    done = subprocess.run([sys.executable, "-c", code, metrics, str(png)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeCuda:
    """torch.cuda as ResourceLogger uses it, on a machine without a GPU: 1.5 GiB allocated at peak, 2 reserved."""

    def __init__(self, initialized=True):
        self.initialized, self.resets = initialized, 0

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def current_device(self):
        return 3

    def max_memory_allocated(self):
        return int(1.5 * 2**30)

    def max_memory_reserved(self):
        return 2 * 2**30

    def reset_peak_memory_stats(self):
        self.resets += 1


def test_gpu_rows_carry_each_steps_peak_memory(tmp_path, monkeypatch):
    """On a GPU each row has the step's peak memory, and the peak is reset so the next row is that step's own; a
    process that never touched CUDA writes no made-up figure."""
    for initialized in (True, False):
        cuda = FakeCuda(initialized)
        monkeypatch.setattr(M, "torch", SimpleNamespace(cuda=cuda))
        out = tmp_path / str(initialized)
        out.mkdir()
        logger, args = ResourceLogger(str(out)), SimpleNamespace(process_index=0)
        for step in (1, 2):
            logger.on_step_begin(args, SimpleNamespace(global_step=step - 1), None)
            logger.on_step_end(args, SimpleNamespace(global_step=step), None)
        rows = _rows(out / "resources_rank0.jsonl")
        if initialized:
            assert [(r["gpu"], r["peak_allocated_gb"], r["peak_reserved_gb"]) for r in rows] == [(3, 1.5, 2.0)] * 2
            assert cuda.resets == 2
        else:
            assert not any("gpu" in r for r in rows) and cuda.resets == 0


def test_reading_metrics_skips_a_cut_line_and_keeps_the_rows_after_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "rew\n{"step": 3, "reward": 0.7}\n')
    assert [r["step"] for r in M.read_metrics(str(path))] == [1, 3]
    assert M.read_metrics(str(tmp_path / "none.jsonl")) == []


def test_each_logged_step_is_one_synced_row_of_its_finite_numbers(tmp_path, durability_log):
    """Rank 0 appends one row per log, synced to disk at once (a crash right after a step keeps it): the step, the
    epoch and every finite number; text, NaN and infinities are left out. Other ranks and empty logs write nothing."""
    from vqrl.training.metrics import MetricsLogger

    synced = durability_log(M)
    logger = MetricsLogger(str(tmp_path))
    zero = SimpleNamespace(global_step=4, epoch=0.5, is_world_process_zero=True)
    other = SimpleNamespace(global_step=4, epoch=0.5, is_world_process_zero=False)
    logger.on_log(None, other, None, logs={"loss": 1.0})
    logger.on_log(None, zero, None, logs={})
    logger.on_log(None, zero, None, logs=None)
    assert not (tmp_path / "metrics.jsonl").exists() and synced == []
    logger.on_log(None, zero, None, logs={"loss": 0.25, "reward": 2, "lr": float("nan"), "kl": float("inf"),
                                          "name": "x", "grad_norm": -float("inf")})
    zero.global_step = 5
    logger.on_log(None, zero, None, logs={"loss": 0.125})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert _rows(tmp_path / "metrics.jsonl") == [{"step": 4, "epoch": 0.5, "loss": 0.25, "reward": 2},
                                                 {"step": 5, "epoch": 0.5, "loss": 0.125}]
    first = len(text.splitlines()[0]) + 1
    assert synced == [first, len(text)]  # each row on disk as it is written


def test_a_restart_keeps_the_rows_up_to_the_resumed_step_on_rank_zero_only(tmp_path, monkeypatch):
    from vqrl.training.metrics import MetricsLogger, keep_steps_up_to

    path = _write_metrics(tmp_path / "metrics.jsonl", [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
                          + [{"loss": 9.0}])  # a row without a step counts as step 0
    logger = MetricsLogger(str(tmp_path))
    logger.on_train_begin(None, SimpleNamespace(global_step=2, is_world_process_zero=False), None)
    assert [r.get("step") for r in M.read_metrics(path)] == [1, 2, 3, 4, None]
    logger.on_train_begin(None, SimpleNamespace(global_step=2, is_world_process_zero=True), None)
    assert [r.get("step") for r in M.read_metrics(path)] == [1, 2, None]
    keep_steps_up_to(path, 0)
    assert M.read_metrics(path) == [{"loss": 9.0}]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # the temporary file was renamed, not left
    fresh = tmp_path / "new" / "sub" / "metrics.jsonl"
    keep_steps_up_to(str(fresh), 3)  # a first start: the folder is made, the file starts empty
    assert fresh.read_text() == ""
    monkeypatch.chdir(tmp_path / "new")  # a bare file name: the working folder
    _write_metrics(tmp_path / "new" / "m.jsonl", [{"step": 1}, {"step": 2}])
    keep_steps_up_to("m.jsonl", 1)
    assert M.read_metrics(str(tmp_path / "new" / "m.jsonl")) == [{"step": 1}]


def test_the_end_of_training_draws_the_curves_next_to_the_metrics_on_rank_zero(tmp_path):
    from vqrl.training.metrics import MetricsLogger

    _write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "reward": 1.0, "completions/mean_length": 4.0}])
    logger = MetricsLogger(str(tmp_path))
    logger.on_train_end(None, SimpleNamespace(is_world_process_zero=False), None)
    assert not (tmp_path / "curves.png").exists()
    logger.on_train_end(None, SimpleNamespace(is_world_process_zero=True), None)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_curves_are_labelled_sized_and_leave_no_figure_open(tmp_path, monkeypatch):
    """Each panel names its axes and curves in a legend (the total reward drawn thicker than its parts), the PNG is
    1100 x 400 pixels, and the figure is closed (a long run's end must not leak figures into a notebook)."""
    import matplotlib.figure
    import matplotlib.pyplot as plt
    from PIL import Image

    figures, savefig = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k))[1])
    rows = [{"step": 1, "reward": 1.0, "rewards/b/mean": 0.5, "rewards/a/mean": 0.2, "rewards/a/std": 0.1,
             "completions/min_length": 3.0, "completions/mean_length": 5.0}]
    png = tmp_path / "curves.png"
    open_before = plt.get_fignums()
    plot_curves(_write_metrics(tmp_path / "metrics.jsonl", rows), str(png))
    rewards, lengths = figures[0].axes
    assert (rewards.get_xlabel(), rewards.get_ylabel(), rewards.get_title()) == ("step", "reward", "Rewards")
    assert (lengths.get_xlabel(), lengths.get_ylabel(), lengths.get_title()) == ("step", "tokens", "Completion length")
    assert [t.get_text() for t in rewards.get_legend().get_texts()] == ["reward (weighted sum)", "a", "b"]
    assert [t.get_text() for t in lengths.get_legend().get_texts()] == ["mean", "min"]
    assert [t.get_fontsize() for t in rewards.get_legend().get_texts() + lengths.get_legend().get_texts()] == [8.0] * 5
    assert [line.get_linewidth() for line in rewards.get_lines()][0] == 2
    assert Image.open(png).size == (1100, 400)
    assert plt.get_fignums() == open_before
