"""One rank of the 2-process test (run by torchrun): train, counting model forward calls outside generation."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer_utils import count_forward_calls, make_trainer  # noqa: E402


def main(model_dir: str, out_dir: str, data: str, trainer_name: str) -> None:
    trainer = make_trainer(model_dir, out_dir, [data], trainer=trainer_name, reward_funcs=["format", "fidelity_rank"],
                           max_steps=2, per_device_train_batch_size=2, num_generations=2, max_completion_length=8,
                           save_strategy="steps", save_steps=1, beta=0.04)
    calls = count_forward_calls(trainer)
    kinds = []
    build = trainer._tokenize_prompts

    def record_kinds(prompts):
        kinds.extend(sorted({p["type"] for m in prompts for p in m[-1]["content"] if p["type"] != "text"}))
        return build(prompts)

    trainer._tokenize_prompts = record_kinds
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"forward_calls": calls["n"], "step": trainer.state.global_step, "kinds": sorted(set(kinds))}, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
