"""Per-sample vision tensors for Qwen-VL: encode a conversation's images and videos, and re-collate any subset.

TRL 1.16 builds log-prob inputs from images only, so videos never reach its loss. We keep each sample's processor
outputs as one dict that travels with the sample through TRL's shuffling and splitting. Trainers and evaluation both
encode prompts here; no model code, and nothing from trainers/ or eval/.
"""

from __future__ import annotations

import torch

# Processor outputs that belong to vision, per sample; concatenated along dim 0 when samples are batched.
VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

# Qwen-VL's vision special tokens: a completion may end with one it sampled, which the log-prob forward must never
# read as a medium (blank_scored_vision_tokens).
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer) -> list[int]:
    """The ids of VISION_SPECIAL_TOKENS this tokenizer knows (unknown ones are left out), sorted."""
    ids = {tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def set_pixel_budgets(processor, min_pixels: int | None = None, max_pixels: int | None = None,
                      video_max_pixels: int | None = None) -> None:
    """Qwen's pixel budgets on the processor's image and video processors (None: keep the processor's own); the
    video processor takes video_max_pixels, else max_pixels. Saved with the processor, so a checkpoint keeps them."""
    for proc in (processor.image_processor, getattr(processor, "video_processor", None)):
        if proc is None:
            continue
        if min_pixels:
            proc.size["shortest_edge"] = min_pixels
        max_px = max_pixels if proc is processor.image_processor else (video_max_pixels or max_pixels)
        if max_px:
            proc.size["longest_edge"] = max_px


def media_of(prompt: list[dict]) -> tuple[list, list, list]:
    """(images, videos, video metadata) of a conversation, in order of appearance."""
    images, videos, metas = [], [], []
    for message in prompt:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image":
                images.append(part["image"])
            elif part.get("type") == "video":
                videos.append(part["video"])
                metas.append(part.get("video_metadata"))
    return images, videos, metas


def encode_prompt(processor, prompt: list[dict], **template_kwargs) -> tuple[list[int], dict]:
    """Token ids of the templated prompt (vision tokens expanded) and its vision tensors."""
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False, **template_kwargs)
    images, videos, metas = media_of(prompt)
    kwargs = {}
    if videos and all(m is not None for m in metas):
        kwargs["video_metadata"] = metas
    enc = processor(text=[text], images=images or None, videos=videos or None, return_tensors="pt", **kwargs)
    vision = {k: enc[k] for k in VISION_KEYS if k in enc}
    return enc["input_ids"][0].tolist(), vision


def collate(samples: list[dict], device=None) -> dict:
    """Concatenate per-sample vision dicts (samples without a key contribute nothing to it)."""
    out = {}
    for key in VISION_KEYS:
        parts = [s[key] for s in samples if key in s and s[key] is not None and s[key].numel() > 0]
        if parts:
            out[key] = torch.cat(parts, dim=0).to(device) if device is not None else torch.cat(parts, dim=0)
    return out


def vision_token_end(tokens: list[int], vision_ids) -> int | None:
    """Where a completion that sampled a vision special token ends: just after the first one, which it keeps (so
    the loss scores that choice); None when it sampled none. The trainers and the log-prob diagnostics both cut here."""
    return next((j + 1 for j, t in enumerate(tokens) if t in vision_ids), None)


def blank_scored_vision_tokens(input_ids: torch.Tensor, labels: torch.Tensor, vision_ids: list[int],
                               blank_id: int) -> torch.Tensor:
    """`input_ids` with every vision special token at a scored position (labels != -100: a completion's) replaced by
    `blank_id`. A completion may end with a sampled vision token (trainers keep it, so the loss scores it); fed to the
    model as such it would be read as a medium (an image placeholder without features, an M-RoPE vision start). Its
    own log-prob comes from the positions before it, and what the model makes of the blank only predicts tokens after
    the completion's end, which nothing scores."""
    blank = torch.isin(input_ids, torch.tensor(vision_ids, device=input_ids.device)) & (labels != -100)
    return input_ids.masked_fill(blank, blank_id)  # no test for "any": that would wait for the GPU


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """1 at image placeholder tokens, 2 at video ones, 0 elsewhere: what Qwen's M-RoPE needs beside the grids."""
    types = torch.zeros_like(input_ids)
    types[input_ids == image_token_id] = 1
    types[input_ids == video_token_id] = 2
    return types
