"""Scoring with a model: batched generation (sampled or greedy) and probability-based expected scores.

`teacher_forced_probs` is the one place that reads the policy's probability of given score tokens; the Refine
trainer's PD reward and `vqrl eval --mode expected` both call it, so they can never disagree.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..data.prompts import SCORE_PREFIX
from ..rewards.parsing import parse_score
from ..trainers import vision as V
from ..trainers import vision_once


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


def digit_token_ids(tokenizer) -> dict[int, int]:
    """digit -> token id for 0..9; the tokenizer must spell each digit as one token (Qwen does)."""
    out = {}
    for d in range(10):
        ids = tokenizer.encode(str(d), add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"tokenizer spells digit {d} as {len(ids)} tokens; expected scoring needs one per digit")
        out[d] = ids[0]
    return out


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
    from trl.trainer.utils import maybe_gather_lm_head_ctx

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


def expected_from_logits(logits_row: torch.Tensor, digit_ids: dict[int, int], low: int = 1, high: int = 5) -> float:
    """Σ d · P(d) over the score digits low..high, renormalised over those digits (the paper's expected score)."""
    digits = list(range(low, high + 1))
    p = logits_row.float()[[digit_ids[d] for d in digits]].softmax(-1)
    return float(sum(d * float(pd) for d, pd in zip(digits, p)))


def score_prefix_ids(tokenizer) -> list[int]:
    return tokenizer.encode(SCORE_PREFIX, add_special_tokens=False)


@torch.no_grad()
def expected_scores(model, processor, prompt_ids: list[list[int]], visions: list[dict],
                    thoughts: list[list[int]] | None = None) -> list[float]:
    """Expected score after `prompt (+ thought) + "<answer>Score: "`, read at the first score digit."""
    tok = processor.tokenizer
    digits = digit_token_ids(tok)
    prefix = score_prefix_ids(tok)
    seqs = [p + (thoughts[i] if thoughts else []) + prefix for i, p in enumerate(prompt_ids)]
    inputs = model_inputs(model, seqs, visions, tok.pad_token_id)
    last = model(**inputs).logits[:, -1]
    return [expected_from_logits(row, digits) for row in last]


@torch.no_grad()
def generate(model, processor, prompt_ids: list[list[int]], visions: list[dict], max_new_tokens: int,
             do_sample: bool, temperature: float = 1.0, num_return_sequences: int = 1) -> list[list[int]]:
    """Completions' token ids (prompt removed, stopped at EOS), `num_return_sequences` per prompt, in order."""
    tok = processor.tokenizer
    k = num_return_sequences  # repeat each prompt K times, vision included
    inputs = model_inputs(model, [p for p in prompt_ids for _ in range(k)], [v for v in visions for _ in range(k)],
                          tok.pad_token_id)
    suppress = [t for t in (model.config.image_token_id, model.config.video_token_id) if t is not None]
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                         temperature=temperature if do_sample else None, top_p=None, top_k=None,
                         pad_token_id=tok.pad_token_id, suppress_tokens=suppress)
    completions = out[:, inputs["input_ids"].size(1):].tolist()
    eos = {tok.eos_token_id, tok.pad_token_id} | set(model.generation_config.eos_token_id
                                                     if isinstance(model.generation_config.eos_token_id, list)
                                                     else [model.generation_config.eos_token_id])
    return [c[: next((i for i, t in enumerate(c) if t in eos), len(c))] for c in completions]


def mean_score(texts: list[str]) -> tuple[float | None, str]:
    """(mean of the scores that parse, first text): `--mode sample` averages K samples; unparsed ones are left out,
    and a record none of whose samples parses has no score (a parse failure)."""
    scores = [s for s in (parse_score(t) for t in texts) if s is not None]
    return (sum(scores) / len(scores) if scores else None), texts[0]
