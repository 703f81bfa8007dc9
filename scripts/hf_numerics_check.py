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

    from vqrl.data.media import VisionSpec, load_image, load_video
    from vqrl.modeling.vision import VISION_KEYS, encode_prompt, mm_token_type_ids, vision_token_ids

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
    cut_at = set(vision_token_ids(processor.tokenizer))

    def load(dtype, attn):
        return AutoModelForImageTextToText.from_pretrained(a.model, dtype=dtype, attn_implementation=attn,
                                                           use_safetensors=True).to(a.device).eval()

    def inputs(model, ids, media, tokens):
        x = torch.tensor([ids + tokens], device=a.device)
        extra = {k: v.to(a.device) for k, v in media.items() if k in VISION_KEYS}
        for k in ("pixel_values", "pixel_values_videos"):
            if k in extra:
                extra[k] = extra[k].to(model.dtype)
        if extra:
            extra["mm_token_type_ids"] = mm_token_type_ids(x, model.config.image_token_id, model.config.video_token_id)
        return x, extra

    reference = load(torch.bfloat16, "sdpa")
    torch.manual_seed(0)
    samples = {}
    for kind, (ids, media) in encoded.items():
        x, extra = inputs(reference, ids, media, [])
        with torch.no_grad():
            out = reference.generate(input_ids=x, attention_mask=torch.ones_like(x), **extra, do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=a.tokens,
                                     min_new_tokens=a.tokens, num_return_sequences=a.samples)
        rows = []
        for row in out[:, x.shape[1]:].tolist():
            cut = next((j for j, t in enumerate(row) if t in cut_at), len(row))
            if cut:
                rows.append(row[:cut])
        samples[kind] = rows

    def score(model):
        result = {}
        for kind, (ids, media) in encoded.items():
            per = []
            for tokens in samples[kind]:
                x, extra = inputs(model, ids, media, tokens)
                with torch.no_grad():
                    logits = model(input_ids=x, **extra).logits[0, len(ids) - 1:-1].float()
                per.append(logits.log_softmax(-1).gather(-1, torch.tensor(tokens, device=a.device)[:, None])[:, 0])
            result[kind] = torch.cat(per).cpu()
        return result

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
            gap = (other[kind] - base[kind]).abs().sort().values
            result[name][kind] = {"mean": gap.mean().item(), "p99": gap[int(0.99 * (gap.numel() - 1))].item(),
                                  "max": gap[-1].item(), "tokens": gap.numel()}
            print(f"{name:>10} vs bf16_sdpa {kind:>6}: mean |Δlogp| {gap.mean():.4f}  p99 "
                  f"{result[name][kind]['p99']:.4f}  ({gap.numel()} tokens)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
