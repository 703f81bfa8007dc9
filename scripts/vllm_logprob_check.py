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
    p.add_argument("--out", default=None)
    a = p.parse_args()

    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import LLM, SamplingParams

    from vqrl.data.media import VisionSpec, load_image, load_video
    from vqrl.modeling.vision import VISION_KEYS, encode_prompt, media_of, mm_token_type_ids
    from vqrl.modeling.vllm_requests import check_expansion, media_request

    processor = AutoProcessor.from_pretrained(a.model, padding_side="left")
    spec = VisionSpec.for_processor(processor, video_fps=2.0, video_max_frames=8)
    image = load_image(os.path.join(ROOT, "examples", "images", "chelsea.jpg"), spec)
    frames, meta = load_video(os.path.join(ROOT, "examples", "videos", "rocket_pan_l0.mp4"), spec)
    question = {"type": "text", "text": "How good is the quality? Think, then answer with a score from 1 to 5."}
    prompts = {
        "text": [{"role": "user", "content": [question]}],
        "image": [{"role": "user", "content": [{"type": "image", "image": image}, question]}],
        "video": [{"role": "user", "content": [{"type": "video", "video": frames, "video_metadata": meta}, question]}],
    }
    encoded = {k: encode_prompt(processor, v) for k, v in prompts.items()}

    llm = LLM(model=a.model, dtype=a.dtype, gpu_memory_utilization=a.gpu_memory_utilization, max_model_len=4096,
              seed=0, logprobs_mode="raw_logprobs", limit_mm_per_prompt={"image": 1, "video": 1})
    params = SamplingParams(n=a.samples, temperature=1.0, max_tokens=a.tokens, min_tokens=a.tokens, logprobs=0,
                            seed=0)
    config = llm.llm_engine.model_config.hf_config
    placeholders = {config.image_token_id, config.video_token_id}
    rows = [media_request(ids, *media_of(prompts[kind]), placeholders) for kind, (ids, _) in encoded.items()]
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
    config = model.config
    result = {"dtype": a.dtype, "model": a.model}
    for (kind, (ids, vision)), out in zip(encoded.items(), outputs):
        gaps = []
        for sample in out.outputs:
            tokens = list(sample.token_ids)
            sampled = torch.tensor([next(iter(d.values())).logprob for d in sample.logprobs])
            x = torch.tensor([ids + tokens], device=a.device)
            extra = {k: v.to(a.device) for k, v in vision.items() if k in VISION_KEYS}
            if extra:
                extra["mm_token_type_ids"] = mm_token_type_ids(x, config.image_token_id, config.video_token_id)
            with torch.no_grad():
                logits = model(input_ids=x, **extra).logits[0, len(ids) - 1:-1].float()
            trained = logits.log_softmax(-1).gather(-1, torch.tensor(tokens, device=a.device)[:, None])[:, 0].cpu()
            gaps.append((trained - sampled).abs())
        gap = torch.cat(gaps).sort().values
        result[kind] = {"mean": gap.mean().item(), "p99": gap[int(0.99 * (gap.numel() - 1))].item(),
                        "max": gap[-1].item(), "tokens": gap.numel()}
        print(f"{kind:>6}: mean |Δlogp| {result[kind]['mean']:.4f}  p99 {result[kind]['p99']:.4f}  "
              f"max {result[kind]['max']:.4f}  ({gap.numel()} tokens)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
