"""Batched model inputs and teacher forcing: the policy's probability of given tokens after given prefixes.

`teacher_forced_probs` is the one place that reads the policy's probability of given score tokens; the Refine
trainer's PD reward and `vqrl eval --mode expected` both call it, so they can never disagree. It never samples and
never changes the model.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from . import vision as V
from . import vision_once


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids, mask


def model_inputs(model, seqs: list[list[int]], visions: list[dict], pad_id: int, maps: dict | None = None) -> dict:
    """Left-padded ids + the batch's vision tensors + Qwen's modality ids, on the model's device.

    With `maps` (a dict to fill), pixels of distinct vision dicts only, and in `maps` what `vision_once.encode_once`
    needs to expand their features to every sequence."""
    device = next(model.parameters()).device
    ids, mask = pad_left(seqs, pad_id)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if maps is not None:
        extra, found = vision_once.model_kwargs(visions, device)
        maps.update(found)
    else:
        extra = V.collate(visions, device=device)
    if extra:
        dtype = next(model.parameters()).dtype
        for key in ("pixel_values", "pixel_values_videos"):
            if key in extra:
                extra[key] = extra[key].to(dtype)
        cfg = model.config
        extra["mm_token_type_ids"] = V.mm_token_type_ids(inputs["input_ids"], cfg.image_token_id, cfg.video_token_id)
    inputs.update(extra)
    return inputs


def _backbone_and_head(model):
    """The model without its LM head, and the head (through a PEFT wrapper if there is one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


@torch.no_grad()
def teacher_forced_probs(model, prefixes: list[list[int]], targets: list[list[int]], visions: list[dict],
                         pad_id: int, return_logits: bool = False, encode_once: bool = False):
    """P(target token k | prefix + target[:k]) for every k, in one forward over the batch.

    Runs the backbone, then projects only the target positions through the LM head (gathered under ZeRO-3, as TRL's
    fused log-prob head does): full-vocabulary logits over the whole sequence are never built, and the LM head module
    is never called, so DeepSpeed's ZeRO-3 prefetch trace is the same as in TRL's own passes (calling the head module
    here made ZeRO-3 prefetch its weight during TRL's fused pass: "Cannot partition a param in flight").
    Returns a list of 1-D tensors (one per sample); with return_logits also the logits at each target position.
    encode_once: samples that share one vision dict object (a prompt's G completions) share its encoding.
    """
    from trl.trainer.utils import maybe_gather_lm_head_ctx  # here: `vqrl eval` starts without importing TRL

    seqs = [p + t for p, t in zip(prefixes, targets, strict=True)]
    vl_base = vision_once.base_model(model) if encode_once else None
    maps = {} if vl_base is not None else None
    inputs = model_inputs(model, seqs, visions, pad_id, maps)
    backbone, head = _backbone_and_head(model)
    with vision_once.encode_once(vl_base, maps) if maps else nullcontext():
        hidden = backbone(**inputs, use_cache=False).last_hidden_state
    width = inputs["input_ids"].size(1)
    # target token k sits at position width - len(t) + k; its logits come from the position before
    rows = [(i, width - len(t) - 1 + k) for i, t in enumerate(targets) for k in range(len(t))]
    if rows:
        index = torch.tensor(rows, device=hidden.device)
        with maybe_gather_lm_head_ctx(head.weight, head.bias):
            logits = torch.nn.functional.linear(hidden[index[:, 0], index[:, 1]], head.weight, head.bias).float()
    # one softmax and one copy to the host for the whole batch (no device sync per sample)
    flat = torch.tensor([tok for t in targets for tok in t], dtype=torch.long)
    p_all = logits.softmax(-1).gather(1, flat.to(logits.device)[:, None])[:, 0].cpu() if rows else torch.empty(0)
    logits_all = logits.cpu() if rows and return_logits else None  # full-vocabulary rows only when asked for
    probs, out_rows, at = [], [], 0
    for t in targets:
        probs.append(p_all[at:at + len(t)])
        if return_logits:
            out_rows.append(logits_all[at:at + len(t)] if t else torch.empty(0, head.out_features))
        at += len(t)
    return (probs, out_rows) if return_logits else probs
