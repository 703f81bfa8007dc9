"""Trainers by name: `--trainer standard|vllm|refine` picks one, `--trainer package.module:Class` a trainer of your
own (a subclass of base.VQRLTrainer); all are thin subclasses of base.VQRLTrainer.

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
    """The trainer class for a registered name or a `package.module:Class` (ValueError saying why not)."""
    if not isinstance(name, str) or (name not in TRAINERS and ":" not in name):
        raise ValueError(f"unknown trainer; choose from {', '.join(TRAINERS)}, or give package.module:Class")
    module_name, _, attr = TRAINERS.get(name, name).partition(":")
    if not all(p.isidentifier() for p in module_name.split(".") + [attr]):
        raise ValueError("expected package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} ({exc})") from exc
    cls = getattr(module, attr, None)
    from .base import VQRLTrainer

    if not (isinstance(cls, type) and issubclass(cls, VQRLTrainer)):
        raise ValueError(f"{name} is {'missing' if cls is None else repr(cls)}: a trainer is a subclass of "
                         "vqrl.trainers.base.VQRLTrainer")
    return cls
