"""Media: decode images (PIL) and videos (PyAV) and size them by Qwen's pixel rules before the processor sees them.

Sizing here keeps token counts predictable (validation can count them); it must not normalise pixels — the model's
own processor does that, so training, evaluation and vLLM see identical inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from qwen_vl_utils.vision_process import smart_resize


@dataclass(frozen=True)
class VisionSpec:
    """Pixel budgets and sampling. factor = patch_size × merge_size (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""

    factor: int = 28
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 1280 * 28 * 28
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 16
    video_min_pixels: int = 4 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28  # per frame
    video_total_pixels: int = 16 * 256 * 28 * 28  # all frames together

    @classmethod
    def for_processor(cls, processor, **overrides) -> "VisionSpec":
        """Read factor and budgets from a Qwen processor, so its own resize leaves our pixels as they are.

        Qwen2/2.5-VL video processors bound pixels per frame; Qwen3-VL's bound all frames together.
        """
        ip = processor.image_processor
        factor = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
        size = getattr(ip, "size", None) or {}
        kwargs = dict(factor=factor)
        if size.get("shortest_edge"):
            kwargs["min_pixels"] = int(size["shortest_edge"])
        if size.get("longest_edge"):
            kwargs["max_pixels"] = int(size["longest_edge"])
        vp = getattr(processor, "video_processor", None)
        vsize = getattr(vp, "size", None) or size
        all_frames = type(vp).__name__.startswith("Qwen3")
        if all_frames:
            kwargs["video_min_pixels"] = factor * factor
        elif vsize.get("shortest_edge"):
            kwargs["video_min_pixels"] = int(vsize["shortest_edge"])
        if vsize.get("longest_edge") and not all_frames:
            kwargs["video_max_pixels"] = int(vsize["longest_edge"])
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if all_frames and vsize.get("longest_edge"):
            kwargs["video_total_pixels"] = min(kwargs.get("video_total_pixels", cls.video_total_pixels),
                                               int(vsize["longest_edge"]))
        return cls(**kwargs)

    def image_tokens(self, height: int, width: int) -> int:
        h, w = _resize_dims(height, width, self.factor, self.min_pixels, self.max_pixels)
        return (h // self.factor) * (w // self.factor)


def _resize_dims(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's smart_resize, with each side at least one `factor` (it can floor a very thin side to 0)."""
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return max(h, factor), max(w, factor)


def load_image(path: str, spec: VisionSpec) -> Image.Image:
    """RGB image resized to Qwen's grid (multiples of `factor`, area within [min_pixels, max_pixels])."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    h, w = _resize_dims(img.height, img.width, spec.factor, spec.min_pixels, spec.max_pixels)
    return img if (h, w) == (img.height, img.width) else img.resize((w, h), Image.BICUBIC)


def video_frame_indices(total: int, native_fps: float, spec: VisionSpec) -> list[int]:
    """Frames sampled at `video_fps` (clamped to [min, max] frames, even count for the temporal patch of 2)."""
    duration = total / native_fps if native_fps > 0 else total
    n = round(duration * spec.video_fps)
    n = min(max(n, spec.video_min_frames), spec.video_max_frames, max(total, 1))
    n = max(2, n - n % 2)
    return np.linspace(0, max(total - 1, 0), n).round().astype(int).tolist()


def load_video(path: str, spec: VisionSpec) -> tuple[torch.Tensor, dict]:
    """Decode with PyAV; return uint8 frames (T, 3, H, W) sized by the per-frame and total budgets, and metadata."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        native_fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("video has no decodable frames")
    idx = video_frame_indices(len(frames), native_fps, spec)
    picked = np.stack([frames[i] for i in idx])  # (T, H, W, 3)
    height, width = picked.shape[1:3]
    per_frame = max(min(spec.video_max_pixels, spec.video_total_pixels // len(idx)), spec.video_min_pixels)
    h, w = _resize_dims(height, width, spec.factor, spec.video_min_pixels, per_frame)
    tensor = torch.from_numpy(picked).permute(0, 3, 1, 2).contiguous()
    if (h, w) != (height, width):
        tensor = torch.nn.functional.interpolate(tensor.float(), size=(h, w), mode="bicubic", antialias=True)
        tensor = tensor.round().clamp(0, 255).to(torch.uint8)
    meta = {
        "fps": native_fps,
        "total_num_frames": len(frames),
        "frames_indices": idx,
        "duration": len(frames) / native_fps,
        "height": height,
        "width": width,
    }
    return tensor, meta


def video_tokens(num_frames: int, height: int, width: int, spec: VisionSpec) -> int:
    per_frame = max(min(spec.video_max_pixels, spec.video_total_pixels // max(num_frames, 1)), spec.video_min_pixels)
    h, w = _resize_dims(height, width, spec.factor, spec.video_min_pixels, per_frame)
    return math.ceil(num_frames / 2) * (h // spec.factor) * (w // spec.factor)


def probe_video(path: str) -> tuple[int, int, int, float]:
    """(frames, height, width, fps) from the container header, without decoding every frame."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        frames = stream.frames
        if not frames and stream.duration:  # some containers do not store a frame count
            frames = round(float(stream.duration * stream.time_base) * fps)
        return int(frames or 0), stream.codec_context.height, stream.codec_context.width, fps
