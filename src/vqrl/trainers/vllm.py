"""The vLLM trainer: rollouts through TRL's vLLM integration (colocate or server), with images AND videos.

TRL sends vLLM token ids plus images only; we hand each prompt's own images and videos (the very frames the loss
forward sees) to vLLM at the one place TRL builds vLLM's requests. Weight sync, sleep mode, ZeRO-3 and LoRA merging
stay TRL's.
"""

from __future__ import annotations

import numpy as np

from .base import VQRLTrainer
from .vision import media_of


def vllm_multi_modal_data(images: list, videos: list, metas: list) -> dict | None:
    """vLLM's `multi_modal_data` for one prompt: PIL images, and videos as uint8 (T, H, W, 3) arrays."""
    data = {}
    if images:
        data["image"] = images if len(images) > 1 else images[0]
    if videos:
        arrays = [v.permute(0, 2, 3, 1).contiguous().numpy().astype(np.uint8) for v in videos]
        items = [(a, m) if m else a for a, m in zip(arrays, metas)]
        data["video"] = items if len(items) > 1 else items[0]
    return data or None


class _MediaLLM:
    """Stands in for TRL's `vllm.LLM` and attaches the batch's media to each request before generating."""

    def __init__(self, llm, trainer: "VLLMTrainer"):
        self._llm, self._trainer = llm, trainer

    def generate(self, prompts, *args, **kwargs):
        media = self._trainer._pending_media or []
        if len(media) != len(prompts):
            raise RuntimeError(
                f"vLLM got {len(prompts)} requests for {len(media)} prompts with media; video rollouts with "
                "vllm_tensor_parallel_size > 1 are not supported yet (use tensor parallel 1 per training process)"
            )
        rows = []
        for row, (images, videos, metas) in zip(prompts, media):
            row = dict(row)
            data = vllm_multi_modal_data(images, videos, metas)
            if data:
                row["multi_modal_data"] = data
            rows.append(row)
        return self._llm.generate(rows, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._llm, name)


class VLLMTrainer(VQRLTrainer):
    """GRPO with vLLM rollouts (the seed's Qwen2VLGRPOVLLMTrainer, minus its copied library code)."""

    def __init__(self, *args, **kwargs):
        config = kwargs["args"]
        config.use_vllm = True
        if config.vllm_max_model_length is None and config.max_prompt_length:
            # prompt AND completion must fit (the seed sized vLLM's context by the completion alone)
            config.vllm_max_model_length = config.max_prompt_length + config.max_completion_length
        super().__init__(*args, **kwargs)
        if config.vllm_max_model_length is not None and config.vllm_max_model_length <= config.max_completion_length:
            raise ValueError(f"vllm_max_model_length {config.vllm_max_model_length} leaves no room for the prompt: "
                             f"it must exceed max_completion_length {config.max_completion_length}")
        self._pending_media: list | None = None
        # a sampled vision token would break the next forward: forbid them in vLLM too
        self.vllm_generation.generation_kwargs = {
            **(self.vllm_generation.generation_kwargs or {}),
            "logit_bias": {int(t): -100.0 for t in self._vision_token_ids},
        }
        if self.vllm_mode == "colocate":
            self.vllm_generation.llm = _MediaLLM(self.vllm_generation.llm, self)

    def _tokenize_prompts(self, prompts: list):
        ids, images, fields = super()._tokenize_prompts(prompts)
        self._pending_media = [media_of(p) for p in prompts]
        return ids, images, fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.vllm_mode == "server":  # TRL's server path sends images itself; it has no video input
            if any(videos for _, videos, _ in self._pending_media):
                raise ValueError("video rollouts need vllm_mode=colocate: TRL's `trl vllm-serve` has no video input")
            per_prompt = [imgs or None for imgs, _, _ in self._pending_media]
            images = per_prompt if any(per_prompt) else None
        return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
