"""Build a vqrl trainer on a tiny model from flag lists, as the command line would."""

from __future__ import annotations

import json
import os

from vqrl.grpo import build_trainer, parse

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def write_records(path, records) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f)
    return str(path)


def flags(model_dir, out_dir, data_files, **overrides) -> list[str]:
    base = {
        "model_name_or_path": model_dir, "output_dir": str(out_dir), "image_root": EXAMPLES, "video_root": EXAMPLES,
        "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 2, "max_completion_length": 8,
        "logging_steps": 1, "report_to": "none", "use_cpu": "true", "save_strategy": "no", "seed": 0,
        "learning_rate": 1e-3,
    }
    base.update(overrides)
    argv = ["--data_files", *data_files]
    for key, value in base.items():
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def make_trainer(model_dir, out_dir, data_files, **overrides):
    args, model_args = parse(flags(model_dir, out_dir, data_files, **overrides))
    return build_trainer(args, model_args)


def count_forward_calls(trainer) -> dict:
    """Count the policy model's forward calls outside generation (which runs on gathered weights): the calls that
    must match across ranks under ZeRO-3. Returns a dict whose "n" grows as the trainer runs."""
    calls = {"n": 0, "on": True}
    trainer.model.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + calls["on"]))
    generate = trainer._generate_single_turn

    def uncounted(*args, **kwargs):
        calls["on"] = False
        try:
            return generate(*args, **kwargs)
        finally:
            calls["on"] = True

    trainer._generate_single_turn = uncounted
    return calls


def count_vision_tower(trainer):
    """Counts the vision tower's calls and the patch rows it encodes: ({"calls", "rows"}, the hook's handle)."""
    seen = {"calls": 0, "rows": 0}

    def hook(module, args, kwargs):
        seen["calls"] += 1
        seen["rows"] += int(args[0].shape[0])

    visual = next(m for name, m in trainer.model.named_modules() if name.endswith("visual"))
    return seen, visual.register_forward_pre_hook(hook, with_kwargs=True)
