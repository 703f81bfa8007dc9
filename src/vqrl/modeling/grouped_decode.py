"""Decoding attention for grouped-query models without copying the KV cache for every query head.

Qwen2.5-VL's language model has fewer key/value heads than query heads (3B: 16 / 2). transformers' SDPA path uses
SDPA's own grouped-query support only when there is no attention mask; decoding from a static KV cache always has one
(padding, unfilled slots), so every decode step expands each layer's whole cached K and V to all query heads first
(`repeat_kv`: a copy of 8x the cache, per layer, per token). The tenth session's H200 profile of `standard` shows it:
per decode step ~3.6 ms of fused copy kernels and ~3.4 ms of attention out of ~10 ms of device time
(docs/perf.md, *Where decoding's time goes*).

A decode step has one query position, so the query heads of a group can stand in for query positions instead: the
query is viewed as (batch, kv heads, heads per group, head_dim) and attends to the un-expanded K and V, the mask of
its one position broadcast over the group. Each query head meets the same keys, values and mask as before; nothing
is copied. Any other call (prefill, training forwards: more than one query position) goes to transformers' SDPA
function unchanged. Registered with transformers' AttentionInterface (and its mask interface, as SDPA's) under NAME
for the language model only; on by default, `--grouped_decode_attention false` turns it off. Measured on one H200
(3B shape): HF generation 4.55 -> 2.39 s per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers

NAME = "vqrl_sdpa_grouped_decode"


def grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                             **kwargs):
    """transformers' attention-function contract: query (batch, heads, q_len, head_dim), key/value (batch, kv heads,
    kv_len, head_dim); returns ((batch, q_len, heads, head_dim), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    single_position_mask = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1
                                                      and attention_mask.shape[2] == 1)
    if q_len != 1 or kv_heads == heads or heads % kv_heads or dropout or not single_position_mask \
            or kwargs.get("position_bias") is not None or kwargs.get("s_aux") is not None \
            or kwargs.get("output_attentions") or getattr(module, "is_causal", True) is False:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # head h = kv head h // group, as repeat_kv
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling,
                                         is_causal=False)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _text_attentions(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "num_key_value_groups")
            and "Vision" not in type(m).__name__]


def check_against_transformers(module) -> None:
    """At install (start-up): a decode-shaped call (padding mask, the model's head counts) must give transformers' SDPA
    result, so a change in transformers' attention contract stops the run instead of silently changing attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    heads, kv_heads = module.config.num_attention_heads, module.config.num_key_value_heads
    dim = getattr(module, "head_dim", None) or module.config.hidden_size // heads
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 1, dim, generator=g)
    k, v = (torch.randn(2, kv_heads, 7, dim, generator=g) for _ in range(2))
    keep = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    keep[0, ..., :3] = False  # left padding on one row
    ours, _ = grouped_decode_attention(module, q, k, v, keep, scaling=dim ** -0.5)
    theirs, _ = sdpa_attention_forward(module, q, k, v, keep, scaling=dim ** -0.5)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"vqrl.modeling.grouped_decode: with transformers {transformers.__version__} the grouped "
                           f"decode attention differs from transformers' SDPA attention; --grouped_decode_attention "
                           f"false turns it off")


def install(model) -> bool:
    """Make the language model of `model` decode with grouped_decode_attention; False where it is not on SDPA (the
    user chose another attention) or has no grouped-query layers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    attentions = _text_attentions(getattr(model, "func", model))
    if not attentions or all(getattr(m, "num_key_value_groups", 1) == 1 for m in attentions):
        return False
    if any(m.config._attn_implementation not in ("sdpa", NAME) for m in attentions):
        return False
    if ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] is not sdpa_mask:
        raise RuntimeError(f"vqrl.modeling.grouped_decode: transformers {transformers.__version__}'s SDPA mask "
                           f"function is not masking_utils.sdpa_mask; --grouped_decode_attention false turns this off")
    check_against_transformers(attentions[0])
    AttentionInterface.register(NAME, grouped_decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks SDPA gets
    for config in {id(m.config): m.config for m in attentions}.values():
        config._attn_implementation = NAME
    return True
