"""The console bar of a run (training/progress.py): a resumed run's bar starts at its step under its own name, and
the postfix shows the numbers that say whether GRPO learns, formatted short, on rank 0 only."""

from __future__ import annotations

from types import SimpleNamespace

from vqrl.training.progress import CompactProgress


class Bar:
    def __init__(self):
        self.postfix, self.description, self.n = None, None, 0

    def set_postfix(self, values, refresh=True):
        self.postfix, self.refreshed = values, refresh

    def set_description(self, text):
        self.description = text

    def update(self, n):
        self.n += n


def test_a_resumed_runs_bar_starts_at_its_step_under_its_name(monkeypatch):
    import transformers.trainer_callback as tc

    monkeypatch.setattr(tc, "tqdm", lambda **kwargs: Bar())  # transformers' own bar, as it creates it
    progress = CompactProgress("format warm-up")
    progress.on_train_begin(None, SimpleNamespace(is_world_process_zero=True, max_steps=10, global_step=4), None)
    assert (progress.training_bar.description, progress.training_bar.n, progress.current_step) == (
        "format warm-up", 4, 4)
    other = CompactProgress()
    other.on_train_begin(None, SimpleNamespace(is_world_process_zero=False, max_steps=10, global_step=4), None)
    assert other.training_bar is None and other.current_step == 4
    assert CompactProgress().desc == "training"


def test_each_reward_follows_the_total_even_without_it_and_values_are_short():
    progress = CompactProgress()
    progress.training_bar = Bar()
    state = SimpleNamespace(is_world_process_zero=True)
    progress.on_log(None, state, None, logs={"grad_norm": 12345.678, "rewards/accuracy/mean": 0.123456,
                                              "rewards/format/mean": 1, "rewards/note/mean": "n/a", "loss": "nan"})
    assert list(progress.training_bar.postfix.items()) == [("accuracy", "0.123"), ("format", "1"), ("grad", "1.23e+04")]
    assert progress.training_bar.refreshed is True  # shown now, not one step late at the bar's next update
    progress.training_bar = Bar()
    progress.on_log(None, SimpleNamespace(is_world_process_zero=False), None, logs={"reward": 1.0})
    assert progress.training_bar.postfix is None
    progress.training_bar = None
    progress.on_log(None, state, None, logs={"reward": 1.0})  # no bar (disable_tqdm): nothing to do, no error


def test_the_progress_bar_shows_reward_each_reward_loss_and_grad():
    progress = CompactProgress()
    progress.training_bar = Bar()
    state = SimpleNamespace(is_world_process_zero=True)
    progress.on_log(None, state, None, logs={"loss": 0.0123, "rewards/format/mean": 0.75, "grad_norm": 0.4,
                                              "reward": 1.5, "rewards/format/std": 0.1, "epoch": 0.3})
    assert list(progress.training_bar.postfix.items()) == [("reward", "1.5"), ("format", "0.75"), ("loss", "0.0123"),
                                                           ("grad", "0.4")]
    progress.training_bar = Bar()
    progress.on_log(None, state, None, logs={"epoch": 0.3})  # nothing worth showing: the bar is left alone
    assert progress.training_bar.postfix is None
