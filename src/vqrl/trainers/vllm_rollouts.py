"""vLLM rollouts for every vqrl trainer (`--use_vllm`): each prompt's own images AND videos reach vLLM, and the gap
between vLLM's sampling log-probs and the training forward is measured per modality.

TRL sends vLLM token ids plus images only; we attach each prompt's media (the very frames the loss forward sees) at
the one place TRL builds vLLM's requests. Weight sync, sleep mode, ZeRO-3 and LoRA merging stay TRL's.
"""

from __future__ import annotations

import numpy as np
import torch


def vllm_multi_modal_data(images: list, videos: list, metas: list) -> dict | None:
    """vLLM's `multi_modal_data` for one prompt: PIL images, and videos as host uint8 (T, H, W, 3) arrays.

    Frames may arrive in accelerator memory (accelerate's data loader moves every tensor of a batch to the device),
    so they are copied to the host before numpy sees them."""
    data = {}
    if images:
        data["image"] = images if len(images) > 1 else images[0]
    if videos:
        arrays = [v.detach().to("cpu").permute(0, 2, 3, 1).contiguous().numpy().astype(np.uint8) for v in videos]
        items = [(a, m) if m else a for a, m in zip(arrays, metas)]
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


def media_request(ids: list[int], images: list, videos: list, metas: list, placeholders: set[int]) -> dict:
    """One vLLM request: token ids (placeholders collapsed when media come along) and the media."""
    data = vllm_multi_modal_data(images, videos, metas)
    if not data:
        return {"prompt_token_ids": list(ids)}
    return {"prompt_token_ids": collapse_placeholders(ids, placeholders), "multi_modal_data": data}


def check_expansion(sent: list[int], processed: list[int], index: int) -> None:
    """vLLM's expanded prompt must be the one the training forward sees, token for token."""
    if list(processed) != list(sent):
        raise RuntimeError(
            f"vLLM expanded prompt {index} to {len(processed)} tokens where the processor gave {len(sent)}: vLLM "
            "would sample from another prompt than the one trained on (check that vLLM and the trainer use the same "
            "processor settings, e.g. max_pixels)")


class MediaLLM:
    """Stands in for TRL's `vllm.LLM` (colocate mode): attaches each prompt's media to its request, and checks that
    vLLM's expansion of the media placeholders gives exactly the trainer's prompt."""

    def __init__(self, llm, trainer):
        self._llm, self._trainer = llm, trainer

    def generate(self, prompts, *args, **kwargs):
        media = self._trainer._pending_media or []
        if len(media) != len(prompts):
            raise RuntimeError(
                f"vLLM got {len(prompts)} requests for {len(media)} prompts with media; rollouts with "
                "vllm_tensor_parallel_size > 1 are not supported yet (use tensor parallel 1 per training process)"
            )
        placeholders = {t for t in (self._trainer._image_token_id, self._trainer._video_token_id) if t is not None}
        rows = [{**row, **media_request(row["prompt_token_ids"], *m, placeholders)} for row, m in zip(prompts, media)]
        outputs = self._llm.generate(rows, *args, **kwargs)
        for i, (row, output) in enumerate(zip(prompts, outputs)):
            check_expansion(row["prompt_token_ids"], output.prompt_token_ids, i)
        return outputs

    def __getattr__(self, name):
        return getattr(self._llm, name)


def size_context(config) -> None:
    """Before TRL starts vLLM: its context must hold prompt AND completion (the seed sized it by the completion)."""
    if config.vllm_max_model_length is None and config.max_prompt_length:
        config.vllm_max_model_length = config.max_prompt_length + config.max_completion_length
    if config.vllm_max_model_length is not None and config.vllm_max_model_length <= config.max_completion_length:
        raise ValueError(f"vllm_max_model_length {config.vllm_max_model_length} leaves no room for the prompt: "
                         f"it must exceed max_completion_length {config.max_completion_length}")


def attach(trainer) -> None:
    """After TRL started vLLM: forbid vision tokens in sampling (a sampled one would break the next forward) and,
    in colocate mode, route requests through MediaLLM."""
    generation = trainer.vllm_generation
    generation.generation_kwargs = {
        **(generation.generation_kwargs or {}),
        "logit_bias": {int(t): -100.0 for t in trainer._vision_token_ids},
    }
    if trainer.vllm_mode == "colocate":
        generation.llm = MediaLLM(generation.llm, trainer)


def server_images(media: list) -> list | None:
    """TRL's server path sends images itself and has no video input: per-prompt image lists, or a clear refusal."""
    if any(videos for _, videos, _ in media):
        raise ValueError("video rollouts need vllm_mode=colocate: TRL's `trl vllm-serve` has no video input")
    per_prompt = [imgs or None for imgs, _, _ in media]
    return per_prompt if any(per_prompt) else None


def logp_gap_metrics(output: dict, vision: list[dict] | None, accelerator) -> dict[str, float]:
    """|log p_vLLM − log p_train| over completion tokens, gathered over processes: mean and 99th percentile, for all
    tokens and per prompt modality. A large gap means vLLM samples from other weights than the policy (a failed
    weight sync) or other inputs (e.g. different frames)."""
    sampled, trained = output.get("sampling_per_token_logps"), output.get("old_per_token_logps")
    if sampled is None or trained is None:
        return {}
    mask = output["completion_mask"].bool()
    gap = (trained - sampled).abs().float().masked_fill(~mask, float("nan"))
    kinds = torch.tensor([2 if v and "pixel_values_videos" in v else 1 if v and "pixel_values" in v else 0
                          for v in (vision or [{}] * gap.size(0))], device=gap.device)
    gap = accelerator.pad_across_processes(gap, dim=1, pad_index=float("nan"))
    gap, kinds = accelerator.gather(gap), accelerator.gather(kinds)
    metrics = {}
    for name, rows in (("", torch.ones_like(kinds, dtype=torch.bool)), ("_image", kinds == 1), ("_video", kinds == 2)):
        values = gap[rows].flatten()
        values = values[~torch.isnan(values)]
        if values.numel():
            metrics[f"vllm/logp_gap_mean{name}"] = values.mean().item()
            ordered = values.sort().values
            metrics[f"vllm/logp_gap_p99{name}"] = ordered[int(0.99 * (ordered.numel() - 1))].item()
    return metrics
