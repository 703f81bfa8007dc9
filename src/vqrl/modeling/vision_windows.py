"""Qwen-VL vision attention in one SDPA call per window length, not one per window.

Qwen2.5-VL's vision tower attends within windows of 112 px in most blocks and within each image or frame in the
others (Qwen2-VL and Qwen3-VL: each image or frame in every block). transformers' SDPA path runs one attention call
per window (a 448 x 448 image: 16 per block) after reading the window lengths to the host in every block: on a GPU
the tower's forward and its recomputation are bound by the host (docs/perf.md, *Why `--checkpoint_layers auto` did
not pay*: ~900 calls per forward). Its flash-attention path instead makes one call per block with the packed window
boundaries (`cu_seqlens`). This module registers, with transformers' AttentionInterface, an attention function that
takes that one call and runs SDPA once per distinct window length, the windows of that length stacked as a batch:
each window attends to itself alone, as in the per-window calls, and the lengths are read once per forward.

transformers passes the boundaries only to an implementation whose name contains "flash" (its
`is_flash_attention_requested`), hence the name; `install` checks that this transformers still does, and each
process checks its first call against the per-window calls (an error naming transformers' version otherwise).
"""

from __future__ import annotations

import logging
import weakref

import torch
import torch.nn.functional as F
import transformers

logger = logging.getLogger(__name__)

NAME = "vqrl_sdpa_windows_flash_api"


class _Plan:
    """How a packed sequence splits into windows: per distinct length, the windows' count and (unless every window
    has that length) the positions of their tokens; and the permutation that puts the stacked outputs back."""

    def __init__(self, cu_seqlens: torch.Tensor):
        bounds = cu_seqlens.detach().cpu().tolist()  # the one host read per boundaries tensor
        self.total = bounds[-1]
        if bounds[0] != 0 or any(b < a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"vision_windows: window boundaries must start at 0 and not decrease, got {bounds[:8]}...")
        by_length: dict[int, list[int]] = {}
        for start, end in zip(bounds, bounds[1:]):
            if end > start:
                by_length.setdefault(end - start, []).append(start)
        self.groups: list[tuple[int, int, torch.Tensor | None]] = []  # (length, windows, token positions or None)
        self.inverse: torch.Tensor | None = None
        if len(by_length) == 1:
            ((length, starts),) = by_length.items()
            self.groups.append((length, len(starts), None))
            return
        order = []
        for length, starts in sorted(by_length.items()):
            positions = (torch.tensor(starts).unsqueeze(1) + torch.arange(length)).reshape(-1)
            order.append(positions)
            self.groups.append((length, len(starts), positions.to(cu_seqlens.device, non_blocking=True)))
        self.inverse = torch.argsort(torch.cat(order)).to(cu_seqlens.device, non_blocking=True)


class _Plans:
    """The plans of the last few boundaries tensors, by identity: a forward passes the same two tensors (windows,
    whole images) to every block, so the boundaries are read to the host once per forward, not once per block."""

    def __init__(self, slots: int = 4):
        self.slots = slots
        self.recent: list[tuple[weakref.ref, int | None, _Plan]] = []

    @staticmethod
    def _version(tensor: torch.Tensor) -> int | None:
        return None if tensor.is_inference() else tensor._version

    def get(self, cu_seqlens: torch.Tensor) -> _Plan:
        version = self._version(cu_seqlens)
        for ref, seen_version, plan in self.recent:
            if ref() is cu_seqlens and seen_version == version:
                return plan
        plan = _Plan(cu_seqlens)
        self.recent = [(weakref.ref(cu_seqlens), version, plan)] + self.recent[:self.slots - 1]
        return plan


_plans = _Plans()
_checked = {"done": False}


def _windowed(query, key, value, plan: _Plan, scaling, dropout) -> torch.Tensor:
    """(1, tokens, heads, head_dim): SDPA within each window, one call per window length."""
    q, k, v = query[0], key[0], value[0]  # (heads, tokens, head_dim), tokens window after window
    heads, _, dim = q.shape
    pieces = []
    for length, count, positions in plan.groups:
        def stack(x):
            x = x if positions is None else x.index_select(1, positions)
            return x.view(heads, count, length, dim).transpose(0, 1)  # (windows, heads, length, head_dim)

        out = F.scaled_dot_product_attention(stack(q), stack(k), stack(v), dropout_p=dropout, scale=scaling)
        pieces.append(out.transpose(1, 2).reshape(count * length, heads, dim))
    out = pieces[0] if plan.inverse is None else torch.cat(pieces).index_select(0, plan.inverse)
    return out.unsqueeze(0)


def _per_window(query, key, value, cu_seqlens, scaling) -> torch.Tensor:
    """transformers' SDPA path, for the first call's check: one call per window, outputs concatenated."""
    bounds = cu_seqlens.tolist()
    outs = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale=scaling)
            .transpose(1, 2) for a, b in zip(bounds, bounds[1:]) if b > a]
    return torch.cat(outs, dim=1)


def windows_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                      cu_seq_lens_q=None, cu_seq_lens_k=None, is_causal=False, **kwargs):
    """AttentionInterface function for Qwen-VL vision blocks: query/key/value (1, heads, tokens, head_dim), windows
    packed back to back as `cu_seq_lens_q` says; returns ((1, tokens, heads, head_dim), None) like transformers'."""
    if cu_seq_lens_q is None or attention_mask is not None or is_causal or query.shape[0] != 1 \
            or (cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q) \
            or key.shape[1] != query.shape[1]:
        raise RuntimeError(
            f"{NAME} is vqrl's attention for Qwen-VL vision towers (non-causal, packed windows, no mask); "
            f"{type(module).__name__} called it otherwise (transformers {transformers.__version__})")
    plan = _plans.get(cu_seq_lens_q)
    if plan.total != query.shape[2]:
        raise RuntimeError(f"{NAME}: window boundaries cover {plan.total} tokens, the sequence has {query.shape[2]}")
    out = _windowed(query, key, value, plan, scaling, dropout)
    if not _checked["done"] and dropout == 0.0:
        with torch.no_grad():
            reference = _per_window(query, key, value, cu_seq_lens_q, scaling)
        try:
            torch.testing.assert_close(out.detach(), reference)
        except AssertionError as exc:
            raise RuntimeError(
                f"vqrl.modeling.vision_windows: batched window attention differs from per-window SDPA on "
                f"{type(module).__name__} (transformers {transformers.__version__}); --batch_vision_windows false "
                f"turns it off. {str(exc).splitlines()[0]}") from exc
        _checked["done"] = True
        logger.info("vision attention: one SDPA call per window length (%s), checked against per-window calls",
                    ", ".join(f"{n} x {length}" for length, n, _ in plan.groups))
    return out, None


def _vision_attentions(visual) -> list:
    return [m for m in visual.modules() if type(m).__name__.endswith("VisionAttention")]


def install(model) -> bool:
    """Make the vision tower of `model` (through any wrapper) use windows_attention; False where the architecture is
    not supported or the tower is not on SDPA (flash attention already makes one call; eager was asked for)."""
    from transformers import AttentionInterface
    from transformers.utils.generic import is_flash_attention_requested

    from .vision_once import base_model

    base = base_model(model)  # None unless a supported Qwen-VL (vision_once.SUPPORTED)
    visual = getattr(base, "visual", None)
    if visual is None:
        return False
    attentions = _vision_attentions(visual)
    if not attentions or any(m.config._attn_implementation not in ("sdpa", NAME) for m in attentions):
        return False
    if not is_flash_attention_requested(requested_attention_implementation=NAME):
        raise RuntimeError(
            f"vqrl.modeling.vision_windows: transformers {transformers.__version__} no longer passes window "
            f"boundaries to an attention named {NAME!r}; --batch_vision_windows false turns it off")
    AttentionInterface.register(NAME, windows_attention)
    for config in {id(m.config): m.config for m in attentions}.values():
        config._attn_implementation = NAME
    if any(m.config._attn_implementation != NAME for m in attentions):
        raise RuntimeError(f"vqrl.modeling.vision_windows: could not set the vision attention of {type(base).__name__}"
                           f" (transformers {transformers.__version__})")
    return True
