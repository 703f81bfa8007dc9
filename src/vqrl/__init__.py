"""vqrl: reinforcement learning (GRPO family) that teaches Qwen-VL models to judge image and video quality.

The package is a thin layer over TRL, transformers and friends; it must not copy their code.
"""

__version__ = "0.1.0"
