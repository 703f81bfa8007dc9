"""The vLLM trainer: the seed's name for the standard trainer with vLLM rollouts (`--trainer vllm` =
`--trainer standard --use_vllm true`). Rollouts with media for every trainer live in vllm_rollouts.py.
"""

from __future__ import annotations

from .standard import StandardTrainer


class VLLMTrainer(StandardTrainer):
    """GRPO with vLLM rollouts (the seed's Qwen2VLGRPOVLLMTrainer, minus its copied library code)."""

    uses_vllm = True
