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


class MediaError(ValueError):
    """A media file that decodes but cannot be used as it is (its message says why and what to do)."""


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

    def __post_init__(self):
        """Refuse budgets that would silently become something else (a negative max_pixels failing every image, a
        video_max_frames of 0 read as 2)."""
        for name in ("factor", "min_pixels", "max_pixels", "video_min_frames", "video_min_pixels", "video_max_pixels",
                     "video_total_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels ({self.max_pixels}) is below min_pixels ({self.min_pixels})")
        if self.video_max_pixels < self.video_min_pixels:
            raise ValueError(f"video_max_pixels ({self.video_max_pixels}) is below video_min_pixels "
                             f"({self.video_min_pixels})")
        if not self.video_fps > 0:
            raise ValueError(f"video_fps must be positive, got {self.video_fps}")
        if self.video_max_frames < 2:
            raise ValueError(f"video_max_frames must be at least 2, got {self.video_max_frames}: Qwen-VL encodes video "
                             "frames in pairs (temporal patch 2), so a video is at least 2 frames (odd counts round "
                             "down)")

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


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. High-bit-depth grey is scaled, not clipped: PIL's own convert clips 16-bit values to 255 (a nearly
    white image) and floats on [0, 1] to 0 or 1 (a black one). 16-bit grey (and 32-bit integers within 0..65535) is
    divided by 257; floats must lie on [0, 1] and are multiplied by 255; anything else is refused (MediaError)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("F", "I") or mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64)
        what = "floating-point" if mode == "F" else "16-bit" if mode.startswith("I;16") else "32-bit integer"
        if not np.isfinite(arr).all():
            raise MediaError(f"{what} grey image holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if mode == "F":
            if lo < 0 or hi > 1:
                raise MediaError(f"floating-point grey image with values in [{lo:g}, {hi:g}]: only floats on [0, 1] "
                                 "are read (their scale is otherwise unknown); save it as an 8- or 16-bit image")
            arr = arr * 255.0
        else:
            if lo < 0 or hi > 65535:
                raise MediaError(f"{what} grey image with values in [{lo:g}, {hi:g}], outside the 16-bit range: save "
                                 "it as an 8- or 16-bit image")
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def decode_image(path: str) -> Image.Image:
    """The whole file decoded to 8-bit RGB at its own size (a truncated file raises here, not later)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img).copy() if img.mode == "RGB" else to_rgb(img)


def check_image(path: str, spec: VisionSpec | None = None) -> int:
    """Decode every byte of the image, as `load_image` would, and return its vision tokens under `spec` (0 without).

    JPEGs decode at 1/8 scale (a DCT-domain shortcut: every byte is still read, so truncation still fails)."""
    with Image.open(path) as img:
        width, height = img.size
        if img.format == "JPEG":
            img.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
        img.load()
        to_rgb(img)
    return spec.image_tokens(height, width) if spec is not None else 0


def load_image(path: str, spec: VisionSpec) -> Image.Image:
    """RGB image resized to Qwen's grid (multiples of `factor`, area within [min_pixels, max_pixels])."""
    img = decode_image(path)
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
        stream = _video_stream(container)
        native_fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise MediaError("the video stream has no decodable frames")
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


def _video_stream(container):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise MediaError(f"no video stream in the file (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def probe_video(path: str, decode_first: bool = False) -> tuple[int, int, int, float]:
    """(frames, height, width, fps) from the container header, without decoding every frame; with decode_first also
    decode the first frame (a header can promise frames that are not there). MediaError when there are none."""
    import av

    with av.open(path) as container:
        stream = _video_stream(container)
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        frames = stream.frames
        if not frames and stream.duration:  # some containers do not store a frame count
            frames = round(float(stream.duration * stream.time_base) * fps)
        height, width = stream.codec_context.height, stream.codec_context.width
        if decode_first:
            first = next(iter(container.decode(stream)), None)
            if first is None:
                raise MediaError("the video stream has no decodable frames")
            height, width, frames = first.height, first.width, frames or 1
        if not frames or not height or not width:
            raise MediaError(f"the video stream has no frames ({frames} frames of {width}x{height})")
        return int(frames), height, width, fps
