"""What the two log-prob diagnostics share (scripts/vllm_logprob_check.py, scripts/hf_numerics_check.py): the same
text-only, image and video prompts, completions ended at a sampled vision token as the trainers end them, the training
forward's log-probs of given tokens (a sampled vision token blanked in what the model reads, as the trainers do), and
the gap summary they print."""

from __future__ import annotations

import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = {"type": "text", "text": "How good is the quality? Think, then answer with a score from 1 to 5."}


def check_prompts(processor) -> tuple[dict, dict]:
    """The chat prompt of each kind, and each encoded as the trainers encode it: (ids, vision tensors)."""
    from vqrl.data.media import VisionSpec, load_image, load_video
    from vqrl.modeling.vision import encode_prompt

    spec = VisionSpec.for_processor(processor, video_fps=2.0, video_max_frames=8)
    image = load_image(os.path.join(ROOT, "examples", "images", "chelsea.jpg"), spec)
    frames, meta = load_video(os.path.join(ROOT, "examples", "videos", "rocket_pan_l0.mp4"), spec)
    prompts = {
        "text": [{"role": "user", "content": [QUESTION]}],
        "image": [{"role": "user", "content": [{"type": "image", "image": image}, QUESTION]}],
        "video": [{"role": "user", "content": [{"type": "video", "video": frames, "video_metadata": meta}, QUESTION]}],
    }
    return prompts, {k: encode_prompt(processor, v) for k, v in prompts.items()}


def model_inputs(model, ids: list[int], media: dict, tokens: list[int], device,
                 vision_ids=()) -> tuple[torch.Tensor, dict]:
    """input_ids of prompt + tokens and the vision keyword arguments, as the trainers' log-prob forward gets them: a
    vision token among `tokens` (one of `vision_ids`) is blanked (pad) in what the model reads."""
    from vqrl.modeling.vision import VISION_KEYS, blank_scored_vision_tokens, mm_token_type_ids

    x = torch.tensor([ids + tokens], device=device)
    if vision_ids:
        scored = torch.tensor([[-100] * len(ids) + tokens], device=device)
        blank = getattr(model.config.get_text_config(), "pad_token_id", None) or 0  # any text token would do
        x = blank_scored_vision_tokens(x, scored, sorted(vision_ids), blank)
    extra = {k: v.to(device) for k, v in media.items() if k in VISION_KEYS}
    for k in ("pixel_values", "pixel_values_videos"):
        if k in extra:
            extra[k] = extra[k].to(model.dtype)
    if extra:
        extra["mm_token_type_ids"] = mm_token_type_ids(x, model.config.image_token_id, model.config.video_token_id)
    return x, extra


def token_logps(model, ids: list[int], media: dict, tokens: list[int], device, vision_ids=()) -> torch.Tensor:
    """log p(token) of each completion token under `model` (host float32)."""
    x, extra = model_inputs(model, ids, media, tokens, device, vision_ids)
    with torch.no_grad():
        logits = model(input_ids=x, **extra).logits[0, len(ids) - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(tokens, device=device)[:, None])[:, 0].cpu()


def gap_stats(gap: torch.Tensor) -> dict:
    """Mean, 99th percentile and max of |Δ log p| over tokens."""
    gap = gap.abs().sort().values
    return {"mean": gap.mean().item(), "p99": gap[int(0.99 * (gap.numel() - 1))].item(), "max": gap[-1].item(),
            "tokens": gap.numel()}
