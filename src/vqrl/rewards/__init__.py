"""Reward functions for quality-assessment GRPO, by name: `REWARDS[name]` or `build_reward_funcs(names, ...)`.

No reward may raise on a malformed completion: it scores 0 and counts in the `parse_fail/<name>` metric.
"""

from .parsing import completion_text, extract_answer, parse_score
from .registry import REWARDS, RewardFunc, build_reward_funcs, reward_options

__all__ = ["REWARDS", "RewardFunc", "build_reward_funcs", "completion_text", "extract_answer", "parse_score",
           "reward_options"]
