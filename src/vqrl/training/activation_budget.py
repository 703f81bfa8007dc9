"""Selective activation checkpointing (`--checkpoint_layers auto|all|N` with `--gradient_checkpointing`): recompute
in the backward only as many language layers as memory needs, measured on the GPU, instead of all of them; the vision
tower keeps its activations first (small under vision-once, and its recomputation is host-bound: Qwen's SDPA path
runs one attention call per window, ~900 per forward, which on the H200 cost ~1.9 s of a 10 s step, docs/perf.md).

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


def _checkpointing_layers(model, vision: bool) -> list:
    return [m for name, m in model.named_modules()
            if isinstance(m, GradientCheckpointingLayer) and ("visual" in name.split(".")) == vision]


def language_layers(model) -> list:
    """The decoder layers of the language model that checkpoint."""
    return _checkpointing_layers(model, vision=False)


def vision_blocks(model) -> list:
    """The vision tower's blocks that checkpoint (module path through `visual`)."""
    return _checkpointing_layers(model, vision=True)


def bytes_per_token_per_layer(config, dtype_bytes: int = 2) -> int:
    """Activation bytes a Qwen-style decoder layer keeps per token for its backward when not checkpointed: the
    norm inputs (upcast to float32), q/k/v and attention output, the MLP's gate, up, activation and product.
    Deliberately an overestimate (SDPA's mem-efficient kernel keeps less)."""
    text = getattr(config, "text_config", config)
    h, inter = text.hidden_size, text.intermediate_size
    head_dim = getattr(text, "head_dim", None) or h // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    return dtype_bytes * (12 * h + 4 * kv + 4 * inter) + 4 * 2 * h


def bytes_per_patch_per_block(config, dtype_bytes: int = 2) -> int:
    """As `bytes_per_token_per_layer`, for one vision block and one patch (the tower's attention has full-width
    k and v). Qwen2-VL names the tower's width `embed_dim` (its `hidden_size` is the merger's output); 0 without a
    vision config."""
    vision = getattr(config, "vision_config", None)
    if vision is None:
        return 0
    h = getattr(vision, "embed_dim", None) or vision.hidden_size
    inter = getattr(vision, "intermediate_size", None) or int(h * getattr(vision, "mlp_ratio", 4))
    return dtype_bytes * (16 * h + 4 * inter) + 4 * 2 * h


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


def trains(blocks: list) -> bool:
    """Whether any of these blocks has a trainable parameter: a frozen tower keeps nothing for a backward."""
    return any(p.requires_grad for block in blocks for p in block.parameters())


class ActivationBudget(TrainerCallback):
    """`N`: the vision tower and the first N language layers keep their activations. `auto`: measures a fully
    checkpointed step, then lets the vision tower keep them if they fit, then as many language layers as the rest
    of the free memory allows; checks the next step and, if it came closer to the limit than planned, halves the
    kept language layers (or, with none kept, recomputes the tower again).

    The trainer calls `apply()` before each loss pass: TRL turns checkpointing off for HF generation and back on for
    every layer afterwards. Placed FIRST among the callbacks: it reads the step's peak before ResourceLogger resets
    the peak counters."""

    measure_after = 2  # steps of this process; the first has no optimizer state yet: its peak understates the rest

    def __init__(self, model, setting: str | int, tokens_fn, patches_fn=lambda: 0):
        self.layers = language_layers(model)
        self.vision = vision_blocks(model)
        self.per_token = bytes_per_token_per_layer(model.config)
        self.per_patch = bytes_per_patch_per_block(model.config)
        self.tokens_fn = tokens_fn  # the most tokens a loss micro-batch held so far
        self.patches_fn = patches_fn  # the most patches the vision tower encoded in a loss micro-batch so far
        self.auto = setting == "auto"
        self.kept: int | None = None if self.auto else min(int(setting), len(self.layers))
        self.vision_kept: bool | None = None if self.auto else True
        self.planned_peak: float | None = None
        self.vision_cost = 0.0  # planned bytes of the tower's kept activations
        self.steps = 0
        self.log: dict[str, float] = {}

    def apply(self) -> None:
        if self.kept is not None:
            set_kept(self.layers, self.kept)
        if self.vision_kept is not None:
            set_kept(self.vision, len(self.vision) if self.vision_kept else 0)

    def vision_estimate(self) -> float | None:
        """Bytes the vision tower's kept activations would take (with the margin); 0 for a frozen tower (it keeps
        nothing for a backward), None for a trainable one that has not encoded anything yet (unknown: recompute)."""
        if not self.vision or not trains(self.vision):
            return 0.0
        patches = self.patches_fn()
        return ESTIMATE_MARGIN * self.per_patch * len(self.vision) * patches if patches else None

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
            room = max(0.0, capacity - peak)
            estimate = self.vision_estimate()
            self.vision_kept = bool(self.vision) and agree(int(estimate is not None and estimate <= room)) == 1
            vision = estimate or 0.0
            self.vision_cost = vision if self.vision_kept else 0.0
            room -= self.vision_cost
            per_layer = ESTIMATE_MARGIN * self.per_token * self.tokens_fn()
            keep = int(room // per_layer) if per_layer > 0 else 0
            self.kept = agree(min(keep, len(self.layers)))
            self.planned_peak = peak + self.vision_cost + self.kept * per_layer
            self.apply()
            self.log = {"activation_budget/kept_layers": self.kept, "activation_budget/layers": len(self.layers),
                        "activation_budget/vision_kept": int(self.vision_kept),
                        "activation_budget/measured_peak_gb": peak / 2**30,
                        "activation_budget/capacity_gb": capacity / 2**30}
            logger.info("activation checkpointing: %d of %d language layers now keep their activations, the vision "
                        "tower %s (measured peak %.1f GB, usable %.1f GB, estimate %.2f GB per layer, %.2f GB for "
                        "the tower)", self.kept, len(self.layers), "too" if self.vision_kept else "does not",
                        peak / 2**30, capacity / 2**30, per_layer / 2**30, vision / 2**30)
        elif self.steps == self.measure_after + 1 and (self.kept or self.vision_cost):
            capacity = self._capacity()
            over = int(peak > max(self.planned_peak or 0.0, capacity * 0.97))
            if agree(-over) < 0:  # any rank over its plan: all halve (the tower goes last)
                if self.kept:
                    self.kept //= 2
                else:
                    self.vision_kept, self.vision_cost = False, 0.0
                self.apply()
                logger.warning("activation checkpointing: step peak %.1f GB over plan; %d layers keep activations now"
                               "%s", peak / 2**30, self.kept, "" if self.vision_kept else ", the vision tower none")
            self.log["activation_budget/kept_layers"] = self.kept
            self.log["activation_budget/vision_kept"] = int(self.vision_kept)
            self.log["activation_budget/checked_peak_gb"] = peak / 2**30
