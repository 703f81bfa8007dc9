#!/usr/bin/env python
"""Do vLLM's sampling log-probs match the training forward's? Samples completions with vLLM for a text-only, an image
and a video prompt, scores the same tokens with the HF model (as the trainers' log-prob passes do), and prints mean and
99th percentile |Δ log p| per prompt kind. A gap on media prompts only points at media handling (pixels, M-RoPE
positions); a gap everywhere at numerics. Usage (GPU machine): python scripts/vllm_logprob_check.py --model DIR
[--dtype bfloat16|float32] [--out result.json]
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
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--gpu_memory_utilization", type=float, default=0.3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mm_encoder_attn_backend", default=None,
                   help="vLLM's attention for the vision tower (e.g. TORCH_SDPA, HF's kernel): tells a kernel "
                   "difference from a processing one when only media prompts show a gap")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import LLM, SamplingParams

    from logprob_probe import check_prompts, gap_stats, token_logps

    from vqrl.modeling.vision import media_of, vision_token_end, vision_token_ids
    from vqrl.modeling.vllm_compat import llm_drops_video_metadata
    from vqrl.modeling.vllm_requests import check_expansion, media_request

    processor = AutoProcessor.from_pretrained(a.model, padding_side="left")
    prompts, encoded = check_prompts(processor)

    llm = LLM(model=a.model, dtype=a.dtype, gpu_memory_utilization=a.gpu_memory_utilization, max_model_len=4096,
              seed=0, logprobs_mode="raw_logprobs", limit_mm_per_prompt={"image": 1, "video": 1},
              **({"mm_encoder_attn_backend": a.mm_encoder_attn_backend} if a.mm_encoder_attn_backend else {}))
    params = SamplingParams(n=a.samples, temperature=1.0, max_tokens=a.tokens, min_tokens=a.tokens, logprobs=0,
                            seed=0)
    config = llm.llm_engine.model_config.hf_config
    placeholders = {config.image_token_id, config.video_token_id}
    metadata_in_kwargs = llm_drops_video_metadata(llm)
    rows = [media_request(ids, *media_of(prompts[kind]), placeholders, metadata_in_kwargs)
            for kind, (ids, _) in encoded.items()]
    outputs = llm.generate(rows, params, use_tqdm=False)
    for i, ((ids, _), out) in enumerate(zip(encoded.values(), outputs)):
        check_expansion(ids, out.prompt_token_ids, i)
    del llm
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=getattr(torch, a.dtype),
                                                        attn_implementation="sdpa").to(a.device).eval()
    vision_tokens = set(vision_token_ids(processor.tokenizer))
    import vllm

    result = {"dtype": a.dtype, "model": a.model, "mm_encoder_attn_backend": a.mm_encoder_attn_backend,
              "vllm": vllm.__version__, "video_metadata_in_kwargs": metadata_in_kwargs}
    for (kind, (ids, vision)), out in zip(encoded.items(), outputs):
        gaps = []
        for sample in out.outputs:
            tokens = list(sample.token_ids)
            sampled = torch.tensor([next(iter(d.values())).logprob for d in sample.logprobs])
            keep = vision_token_end(tokens, vision_tokens) or len(tokens)
            tokens, sampled = tokens[:keep], sampled[:keep]
            if tokens:
                gaps.append(token_logps(model, ids, vision, tokens, a.device, vision_tokens) - sampled)
        result[kind] = gap_stats(torch.cat(gaps))
        print(f"{kind:>6}: mean |Δlogp| {result[kind]['mean']:.4f}  p99 {result[kind]['p99']:.4f}  "
              f"max {result[kind]['max']:.4f}  ({result[kind]['tokens']} tokens)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
