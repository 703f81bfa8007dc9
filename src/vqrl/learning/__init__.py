"""The learning check: proof that vqrl's GRPO teaches a random tiny model to judge image quality (docs/learning.md).

Task data, baselines, warm-up, GRPO runs and their evaluation, the multi-seed runner and its report. Nothing in the
trainers depends on it.
"""
