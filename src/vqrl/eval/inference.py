"""Scoring with a model: batched generation (sampled or greedy) and probability-based expected scores.

Model inputs and teacher forcing come from vqrl.modeling.teacher_forcing, which the Refine trainer's PD reward uses
too, so evaluation and training read the model alike. It scores; it never trains or writes files.
"""

from __future__ import annotations

import torch

from ..data.prompts import SCORE_PREFIX
from ..modeling.teacher_forcing import model_inputs, teacher_forced_probs

__all__ = ["digit_token_ids", "expected_from_logits", "expected_scores", "generate", "mean_score", "score_prefix_ids",
           "teacher_forced_probs"]  # teacher_forced_probs: re-exported for code written before it moved to modeling
from ..rewards.parsing import parse_score


def digit_token_ids(tokenizer) -> dict[int, int]:
    """digit -> token id for 0..9; the tokenizer must spell each digit as one token (Qwen does)."""
    out = {}
    for d in range(10):
        ids = tokenizer.encode(str(d), add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"tokenizer spells digit {d} as {len(ids)} tokens; expected scoring needs one per digit")
        out[d] = ids[0]
    return out


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
