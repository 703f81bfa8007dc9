"""Selective activation checkpointing (`--checkpoint_layers auto|all|N` with `--gradient_checkpointing`): recompute
in the backward only as many language layers as memory needs, measured on the GPU, instead of all of them.

Recomputing a layer costs a second forward of it; keeping its activations costs memory. HF's switch is all or
nothing. We set the public per-layer flag `gradient_checkpointing` of transformers' GradientCheckpointingLayer,
nothing else: the math is unchanged (tests compare loss and gradients). It must never risk an out-of-memory run: the
budget comes from the measured peak of a fully checkpointed step and a deliberately high per-layer estimate, and is
halved if a step comes closer to the limit than planned.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer

logger = logging.getLogger(__name__)

# Fraction of the memory this process may use (the rest: allocator fragmentation, NCCL, other processes' growth).
USABLE = 0.90
# Safety factor on the per-layer activation estimate below.
ESTIMATE_MARGIN = 1.3


def parse_setting(value) -> str | int:
    """'auto', 'all' or a non-negative number of layers that keep their activations."""
    text = str(value).strip().lower()
    if text in ("auto", "all"):
        return text
    if text.isdigit():
        return int(text)
    raise ValueError(f"checkpoint_layers must be auto, all or a number of layers, not {value!r}")


def language_layers(model) -> list:
    """The decoder layers of the language model that checkpoint (vision blocks are left as they are: with
    vision-once the tower sees each image once, and its share of activation memory is small)."""
    layers = [m for name, m in model.named_modules()
              if isinstance(m, GradientCheckpointingLayer) and "visual" not in name.split(".")]
    return layers


def bytes_per_token_per_layer(config, dtype_bytes: int = 2) -> int:
    """Activation bytes a Qwen-style decoder layer keeps per token for its backward when not checkpointed: the
    norm inputs (upcast to float32), q/k/v and attention output, the MLP's gate, up, activation and product.
    Deliberately an overestimate (SDPA's mem-efficient kernel keeps less)."""
    text = getattr(config, "text_config", config)
    h, inter = text.hidden_size, text.intermediate_size
    head_dim = getattr(text, "head_dim", None) or h // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    return dtype_bytes * (12 * h + 4 * kv + 4 * inter) + 4 * 2 * h


def agree(keep: int) -> int:
    """The smallest choice over all processes: under ZeRO-3 a recomputed layer gathers its parameters again, so every
    rank must recompute the same layers or the collectives fall out of step."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = torch.tensor([keep], device=torch.cuda.current_device() if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return int(value.item())
    return keep


def set_kept(layers: list, keep: int) -> None:
    """The first `keep` layers keep their activations; the others recompute them in the backward."""
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i >= keep


class ActivationBudget(TrainerCallback):
    """`N`: the first N language layers keep their activations. `auto`: measures a fully checkpointed step, then
    lets as many layers keep them as the free memory allows; checks the next step and halves the kept layers if it
    came closer to the limit than planned.

    The trainer calls `apply()` before each loss pass: TRL turns checkpointing off for HF generation and back on for
    every layer afterwards. Placed FIRST among the callbacks: it reads the step's peak before ResourceLogger resets
    the peak counters."""

    measure_after = 2  # steps of this process; the first has no optimizer state yet: its peak understates the rest

    def __init__(self, model, setting: str | int, tokens_fn):
        self.layers = language_layers(model)
        self.per_token = bytes_per_token_per_layer(model.config)
        self.tokens_fn = tokens_fn  # the most tokens a loss micro-batch held so far
        self.auto = setting == "auto"
        self.kept: int | None = None if self.auto else min(int(setting), len(self.layers))
        self.planned_peak: float | None = None
        self.steps = 0
        self.log: dict[str, float] = {}

    def apply(self) -> None:
        if self.kept is not None:
            set_kept(self.layers, self.kept)

    def _capacity(self) -> float:
        free, total = torch.cuda.mem_get_info()
        return USABLE * (free + torch.cuda.memory_reserved())  # memory other processes (vLLM) hold is not ours

    def on_step_end(self, args, state, control, **kwargs):
        if not (self.auto and torch.cuda.is_available()):
            return
        self.steps += 1
        peak = torch.cuda.max_memory_allocated()
        if self.steps == self.measure_after:
            capacity = self._capacity()
            per_layer = ESTIMATE_MARGIN * self.per_token * self.tokens_fn()
            keep = int(max(0.0, capacity - peak) // per_layer) if per_layer > 0 else 0
            self.kept = agree(min(keep, len(self.layers)))
            self.planned_peak = peak + self.kept * per_layer
            set_kept(self.layers, self.kept)
            self.log = {"activation_budget/kept_layers": self.kept, "activation_budget/layers": len(self.layers),
                        "activation_budget/measured_peak_gb": peak / 2**30,
                        "activation_budget/capacity_gb": capacity / 2**30}
            logger.info("activation checkpointing: %d of %d language layers now keep their activations (measured "
                        "peak %.1f GB, usable %.1f GB, estimate %.2f GB per layer)", self.kept, len(self.layers),
                        peak / 2**30, capacity / 2**30, per_layer / 2**30)
        elif self.steps == self.measure_after + 1 and self.kept:
            capacity = self._capacity()
            over = int(peak > max(self.planned_peak or 0.0, capacity * 0.97))
            if agree(-over) < 0:  # any rank over its plan: all halve
                self.kept //= 2
                set_kept(self.layers, self.kept)
                logger.warning("activation checkpointing: step peak %.1f GB over plan; %d layers keep activations now",
                               peak / 2**30, self.kept)
            self.log["activation_budget/kept_layers"] = self.kept
            self.log["activation_budget/checked_peak_gb"] = peak / 2**30
