"""The standard trainer: rollouts with transformers `generate`, everything else from the base.

It adds nothing on purpose: the base already carries images and videos through every pass.
"""

from __future__ import annotations

from .base import VQRLTrainer


class StandardTrainer(VQRLTrainer):
    """GRPO with HF generate rollouts (the seed's Qwen2VLGRPOTrainer, minus its copied library code)."""
