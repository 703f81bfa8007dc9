"""vLLM rollouts for every vqrl trainer (`--use_vllm`): each prompt's own images AND videos reach vLLM, and the gap
between vLLM's sampling log-probs and the training forward is measured per modality.

TRL sends vLLM token ids plus images only; we attach each prompt's media (the very frames the loss forward sees) at
the one place TRL builds vLLM's requests (the requests themselves: vqrl.modeling.vllm_requests, which evaluation uses
too). Weight sync, sleep mode, ZeRO-3 and LoRA merging stay TRL's.
"""

from __future__ import annotations

import logging

import torch

from ..modeling.vllm_compat import llm_drops_video_metadata
from ..modeling.vllm_requests import check_expansion, media_request

logger = logging.getLogger("vqrl")

# Mean |log p_vLLM - log p_train| per token above which rollouts are off-policy beyond numerics: bf16 kernels give
# ~0.03 (H200, docs/perf.md), a wrong prompt or failed weight sync ~1.
LOGP_GAP_WARN = 0.1


class MediaLLM:
    """Stands in for TRL's `vllm.LLM` (colocate mode): attaches each prompt's media to its request, and checks that
    vLLM's expansion of the media placeholders gives exactly the trainer's prompt."""

    def __init__(self, llm, trainer):
        self._llm, self._trainer = llm, trainer
        self._metadata_in_kwargs = llm_drops_video_metadata(llm)

    def generate(self, prompts, *args, **kwargs):
        media = self._trainer._pending_media or []
        if len(media) != len(prompts):
            raise RuntimeError(
                f"vLLM got {len(prompts)} requests for {len(media)} prompts with media; rollouts with "
                "vllm_tensor_parallel_size > 1 are not supported yet (use tensor parallel 1 per training process)"
            )
        placeholders = {t for t in (self._trainer._image_token_id, self._trainer._video_token_id) if t is not None}
        rows = [{**row, **media_request(row["prompt_token_ids"], *m, placeholders, self._metadata_in_kwargs)}
                for row, m in zip(prompts, media)]
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
    """After TRL started vLLM: in colocate mode, route requests through MediaLLM. Sampling is left as TRL sets it
    (no bias against vision tokens: the base trainer cuts a completion before one, and the loss must score the
    distribution vLLM samples from)."""
    generation = trainer.vllm_generation
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


def warn_on_logp_gap(metrics: dict[str, float], warned: set[str]) -> None:
    """Say once per prompt kind when vLLM's sampling log-probs are far from the policy's: TRL's importance-sampling
    correction then gives those rollouts little or no weight, which no other metric makes obvious."""
    for kind in ("image", "video", "text-only"):
        key = "vllm/logp_gap_mean" + ("" if kind == "text-only" else f"_{kind}")
        gap = metrics.get(key)
        if gap is None or gap <= LOGP_GAP_WARN or kind in warned:
            continue
        if kind == "text-only" and any(k in warned or f"vllm/logp_gap_mean_{k}" in metrics for k in ("image", "video")):
            continue  # the overall mean includes media prompts: reported by kind above
        warned.add(kind)
        logger.warning(
            "vLLM's log-probs on %s prompts differ from the trained policy's by %.2f nats per token on average "
            "(bf16 numerics give ~0.03): vLLM samples from other inputs or weights than the policy, and TRL's "
            "importance-sampling correction gives these rollouts little weight. See docs/perf.md (log-prob check; "
            "scripts/vllm_logprob_check.py measures it per prompt kind).", kind, gap)
