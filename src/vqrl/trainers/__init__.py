"""Trainers by name: `--trainer standard|vllm|refine` picks one; all are thin subclasses of base.VQRLTrainer.

Modules are imported only when chosen, so a missing optional dependency (vLLM) only matters to who asks for it.
"""

from __future__ import annotations

import importlib

TRAINERS = {
    "standard": "vqrl.trainers.standard:StandardTrainer",
    "vllm": "vqrl.trainers.vllm:VLLMTrainer",
    "refine": "vqrl.trainers.refine:RefineTrainer",
}


def get_trainer(name: str):
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; choose from {', '.join(TRAINERS)}")
    module, cls = TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
