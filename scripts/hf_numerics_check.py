#!/usr/bin/env python
"""How sensitive is the training forward itself to numerics, per prompt kind? Samples completions with HF (bf16) for
a text-only, an image and a video prompt, then scores the same tokens three ways: bf16 + SDPA (the trainers'),
bf16 + eager attention (other kernels, same precision) and float32 + SDPA, and prints mean and 99th percentile
|Δ log p| against the first. If video prompts move much more than image ones between kernels or precisions, a
vLLM-vs-HF gap on video only (docs/perf.md) can be numerics rather than media handling. No vLLM needed.
Usage (GPU machine): python scripts/hf_numerics_check.py --model DIR [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from logprob_probe import check_prompts, gap_stats, model_inputs, token_logps

    from vqrl.modeling.vision import vision_token_end, vision_token_ids

    processor = AutoProcessor.from_pretrained(a.model, padding_side="left")
    _, encoded = check_prompts(processor)
    vision_ids = set(vision_token_ids(processor.tokenizer))

    def load(dtype, attn):
        return AutoModelForImageTextToText.from_pretrained(a.model, dtype=dtype, attn_implementation=attn,
                                                           use_safetensors=True).to(a.device).eval()

    reference = load(torch.bfloat16, "sdpa")
    torch.manual_seed(0)
    samples = {}
    for kind, (ids, media) in encoded.items():
        x, extra = model_inputs(reference, ids, media, [], a.device)
        with torch.no_grad():
            out = reference.generate(input_ids=x, attention_mask=torch.ones_like(x), **extra, do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=a.tokens,
                                     min_new_tokens=a.tokens, num_return_sequences=a.samples)
        rows = [row[:vision_token_end(row, vision_ids) or len(row)] for row in out[:, x.shape[1]:].tolist()]
        samples[kind] = [row for row in rows if row]

    def score(model):
        return {kind: torch.cat([token_logps(model, ids, media, tokens, a.device, vision_ids)
                                 for tokens in samples[kind]])
                for kind, (ids, media) in encoded.items()}

    base = score(reference)
    del reference
    result = {"model": a.model, "device": a.device}
    for name, (dtype, attn) in {"bf16_eager": (torch.bfloat16, "eager"), "fp32_sdpa": (torch.float32, "sdpa")}.items():
        model = load(dtype, attn)
        other = score(model)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result[name] = {}
        for kind in encoded:
            stats = result[name][kind] = gap_stats(other[kind] - base[kind])
            print(f"{name:>10} vs bf16_sdpa {kind:>6}: mean |Δlogp| {stats['mean']:.4f}  p99 {stats['p99']:.4f}  "
                  f"({stats['tokens']} tokens)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
