"""What the installed vLLM does differently from the HF processor the trainers use, checked where it matters.

Imports vLLM lazily (only callers that run vLLM ask); plain answers out, no patching of vLLM.
"""

from __future__ import annotations

# Models whose HF processor turns a video's metadata (sampled fps) into M-RoPE temporal positions
# (second_per_grid_ts). Qwen2-VL's positions ignore time; Qwen3-VL's vLLM processor has always required metadata.
TIMED_VIDEO_MODELS = ("qwen2_5_vl",)


def drops_video_metadata(model_type: str) -> bool:
    """Whether this vLLM drops a video's (array, metadata) metadata before Qwen2.5-VL's HF processor call.

    vLLM up to at least 0.26 did (fixed upstream in vllm-project/vllm PR 47736, which gave Qwen2.5-VL its own data
    parser with `video_needs_metadata=True`; 0.32 has it): the HF processor then assumes 24 fps and every video
    rollout is sampled under other temporal positions than the training forward scores (measured on the H200: mean
    |Δ log p| 0.20 nats on video, 0.03 on images). Read from vLLM's Qwen2.5-VL processing class; a vLLM without it
    is an error naming the version, not a guess."""
    if model_type not in TIMED_VIDEO_MODELS:
        return False
    import vllm

    try:
        from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLProcessingInfo
    except ImportError as exc:
        raise RuntimeError(f"vLLM {vllm.__version__} has no Qwen2_5_VLProcessingInfo: vqrl cannot tell whether it "
                           "passes video metadata (fps) to the processor; use the vLLM in requirements_VLLM.txt") from exc
    return "get_data_parser" not in vars(Qwen2_5_VLProcessingInfo)


def llm_drops_video_metadata(llm) -> bool:
    """`drops_video_metadata` for the model a `vllm.LLM` serves."""
    return drops_video_metadata(llm.llm_engine.model_config.hf_config.model_type)
