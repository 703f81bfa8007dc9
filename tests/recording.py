"""Reward functions for tests, loaded by name (`recording:record_batch`) the way a user's own reward would be."""

from __future__ import annotations

import json
import os


def record_batch(completions, solution, sample_id, prompts, trainer_state=None, **kwargs):
    """Write what the reward saw (step, sample id, solution, prompt text) to $VQRL_TEST_RECORD; reward = solution."""
    path = os.environ.get("VQRL_TEST_RECORD")
    if path:
        with open(path, "a") as f:
            for sid, sol, prompt in zip(sample_id, solution, prompts, strict=True):
                text = " ".join(p.get("text", "") for m in prompt for p in m["content"] if isinstance(p, dict))
                f.write(json.dumps({"step": trainer_state.global_step if trainer_state else None, "sample_id": sid,
                                    "solution": sol, "text": text}) + "\n")
    return [float(s) for s in solution]


def length_reward(completions, **kwargs):
    """Varies across a group, so advantages are non-zero and the policy loss has a gradient."""
    return [float(len(c if isinstance(c, str) else c[0]["content"]) % 7) for c in completions]


def group_size(completions, num_generations, **kwargs):
    """Reward = the group size the trainer passed along (ranking rewards need it)."""
    return [float(n) for n in num_generations]
