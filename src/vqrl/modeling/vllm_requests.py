"""vLLM requests with media: each prompt's own images and videos, placeholders collapsed for vLLM to expand, and a
token-for-token check of vLLM's expansion against the processor's.

The trainers' vLLM rollouts and `vqrl eval --backend vllm` both build their requests here, so what vLLM samples from
is what the model is trained and scored on. It never imports vLLM (plain data in, plain data out).
"""

from __future__ import annotations

import numpy as np


def vllm_multi_modal_data(images: list, videos: list, metas: list, metadata_in_kwargs: bool = False) -> dict | None:
    """vLLM's `multi_modal_data` for one prompt: PIL images, and videos as host uint8 (T, H, W, 3) arrays, each with
    its metadata as an (array, metadata) pair unless `metadata_in_kwargs` (then bare arrays; see `media_request`).

    Frames may arrive in accelerator memory (accelerate's data loader moves every tensor of a batch to the device),
    so they are copied to the host before numpy sees them."""
    data = {}
    if images:
        data["image"] = images if len(images) > 1 else images[0]
    if videos:
        arrays = [v.detach().to("cpu").permute(0, 2, 3, 1).contiguous().numpy().astype(np.uint8) for v in videos]
        items = arrays if metadata_in_kwargs else [(a, m) if m else a for a, m in zip(arrays, metas)]
        data["video"] = items if len(items) > 1 else items[0]
    return data or None


def collapse_placeholders(ids: list[int], placeholders: set[int]) -> list[int]:
    """The prompt with each run of image/video placeholder tokens cut to one token, which vLLM expands itself.

    Our prompts come from the processor already expanded (one token per visual token, as the training forward needs
    them). vLLM does not recognise such a run as expanded: it expanded the run's first token again (a 54-token image
    became 107 tokens), so it sampled from another prompt than the one trained on."""
    out: list[int] = []
    for token in ids:
        if token in placeholders and out and out[-1] == token:
            continue
        out.append(token)
    return out


def media_request(ids: list[int], images: list, videos: list, metas: list, placeholders: set[int],
                  metadata_in_kwargs: bool = False) -> dict:
    """One vLLM request: token ids (placeholders collapsed when media come along) and the media.

    `metadata_in_kwargs`: for a vLLM that drops a video's metadata on its way to the HF processor
    (`vqrl.modeling.vllm_compat.drops_video_metadata`), the metadata goes as the processor's own `video_metadata`
    argument instead. Without it Qwen2.5-VL's processor assumes 24 fps: second_per_grid_ts 0.083 instead of the
    1.0 of 2 sampled fps, so vLLM samples video completions under other temporal positions than the loss scores.
    Only for one video per prompt: such a vLLM runs its processor on the videos missing from its cache but passes
    every video's metadata (the HF call then fails). A video without metadata gets the processor's default fps on
    both sides (the trainer's `encode_prompt` too)."""
    if metadata_in_kwargs and len(videos) > 1:
        raise ValueError(f"a prompt with {len(videos)} videos: this vLLM drops video metadata (fps), and vqrl's "
                         "workaround sends it for one video per prompt only; use one video per record, --use_vllm "
                         "false, or a vLLM with vllm-project/vllm PR 47736 (e.g. 0.32)")
    data = vllm_multi_modal_data(images, videos, metas, metadata_in_kwargs)
    if not data:
        return {"prompt_token_ids": list(ids)}
    row = {"prompt_token_ids": collapse_placeholders(ids, placeholders), "multi_modal_data": data}
    if metadata_in_kwargs and videos and all(m is not None for m in metas):
        row["mm_processor_kwargs"] = {"video_metadata": list(metas)}
    return row


def check_expansion(sent: list[int], processed: list[int], index: int) -> None:
    """vLLM's expanded prompt must be the one the training forward sees, token for token."""
    if list(processed) != list(sent):
        raise RuntimeError(
            f"vLLM expanded prompt {index} to {len(processed)} tokens where the processor gave {len(sent)}: vLLM "
            "would sample from another prompt than the one trained on (check that vLLM and the trainer use the same "
            "processor settings, e.g. max_pixels)")
