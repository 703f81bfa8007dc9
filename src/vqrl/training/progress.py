"""The console progress bar of a run: transformers' own bar, with the numbers that say whether GRPO is learning
(reward, each reward function, loss, grad norm) on the bar itself instead of a 30-key dict printed every step.

It only displays; metrics.jsonl and TensorBoard keep every logged value.
"""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

SHOWN = (("reward", "reward"), ("loss", "loss"), ("grad_norm", "grad"))


class CompactProgress(ProgressCallback):
    """transformers' ProgressCallback whose logs become the bar's postfix (a resumed run's bar starts where it was)."""

    def __init__(self, desc: str = "training"):
        super().__init__()
        self.desc = desc

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.desc)
            self.training_bar.update(state.global_step)
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and self.training_bar is not None and logs):
            return
        shown = {}
        for key, label in SHOWN:
            if isinstance(logs.get(key), (int, float)):
                shown[label] = logs[key]
            if key == "reward":  # each reward function right after the total
                for name, value in logs.items():
                    if name.startswith("rewards/") and name.endswith("/mean") and isinstance(value, (int, float)):
                        shown[name.split("/")[1]] = value
        if shown:
            self.training_bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)
