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
    """Decode with PyAV; return uint8 frames (T, 3, H, W) sized by the per-frame and total budgets, and metadata.

    Only the kept frames are converted to pixels and held: the frame count comes from the container's packets, the
    kept frames are reached by seeking to the keyframe before each one when that skips decoding work, and each is
    resized as it arrives. Host memory stays near the kept frames' size (a 20 s 1080p clip no longer holds 600 RGB
    frames), and the frames are those the whole-file decode picked (`load_video_full` is that decode: fallback,
    reference in tests)."""
    import av

    with av.open(path) as container:
        stream = _video_stream(container)
        native_fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size]
        pts = sorted(t for t, _ in packets)
        if not pts or len(set(pts)) != len(pts):
            return load_video_full(path, spec)  # no usable timestamps: count by decoding
        idx = video_frame_indices(len(pts), native_fps, spec)
        keyframes = sorted(t for t, key in packets if key)
        frames = _decode_at(container, stream, [pts[i] for i in idx], keyframes, spec)
    if frames is None:
        return load_video_full(path, spec)
    tensor, (height, width) = frames
    return tensor, _video_meta(native_fps, len(pts), idx, height, width)


def load_video_full(path: str, spec: VisionSpec) -> tuple[torch.Tensor, dict]:
    """The reference decode: every frame decoded and counted, the kept ones converted. Used when a file's packets do
    not give a trustworthy frame count; its picks define which frames `load_video` must return."""
    import av

    with av.open(path) as container:
        stream = _video_stream(container)
        native_fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        total = sum(1 for _ in container.decode(stream))
    if not total:
        raise MediaError("the video stream has no decodable frames")
    idx = video_frame_indices(total, native_fps, spec)
    wanted, out = set(idx), []
    with av.open(path) as container:
        stream = _video_stream(container)
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
    height, width = out[0].shape[:2]
    tensor = _resized_stack(out, len(idx), spec)
    return tensor, _video_meta(native_fps, total, idx, height, width)


def _decode_at(container, stream, targets: list[int], keyframes: list[int], spec: VisionSpec):
    """Frames whose presentation timestamps are `targets` (ascending), each resized as it is decoded; None when the
    decoder does not give them back exactly (then the caller decodes the whole file)."""
    n = len(targets)
    out: torch.Tensor | None = None
    size = None
    k, position = 0, None  # position: pts of the last frame decoded in the current run
    while k < len(targets):
        target = targets[k]
        start = max((t for t in keyframes if t <= target), default=None)
        if position is None or start is not None and start > position:  # skipping ahead beats decoding through
            container.seek(start if start is not None else target, stream=stream, backward=True, any_frame=False)
        found = False
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            position = frame.pts
            if frame.pts < target:
                continue
            if frame.pts > target:
                return None  # the target never came out of the decoder
            pixels = frame.to_ndarray(format="rgb24")
            if out is None:
                size = pixels.shape[:2]
                h, w = _frame_size(size[0], size[1], n, spec)
                out = torch.empty((n, 3, h, w), dtype=torch.uint8)
            out[k] = _resize_frame(pixels, out.shape[2:])
            k += 1
            found = True
            if k == len(targets) or targets[k] > _next_keyframe(keyframes, frame.pts):
                break  # the next target lies beyond the next keyframe: seek instead of decoding through
            target = targets[k]
        if not found:
            return None
    return (out, size) if out is not None else None


def _next_keyframe(keyframes: list[int], pts: int) -> float:
    return next((t for t in keyframes if t > pts), math.inf)


def _frame_size(height: int, width: int, n: int, spec: VisionSpec) -> tuple[int, int]:
    per_frame = max(min(spec.video_max_pixels, spec.video_total_pixels // n), spec.video_min_pixels)
    return _resize_dims(height, width, spec.factor, spec.video_min_pixels, per_frame)


def _resize_frame(pixels: np.ndarray, size) -> torch.Tensor:
    """One (H, W, 3) uint8 frame to (3, h, w) uint8: bicubic with antialias, as whole-clip resizing did."""
    frame = torch.from_numpy(pixels).permute(2, 0, 1)
    if tuple(size) == tuple(frame.shape[1:]):
        return frame
    resized = torch.nn.functional.interpolate(frame[None].float(), size=tuple(size), mode="bicubic", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def _resized_stack(frames: list[np.ndarray], n: int, spec: VisionSpec) -> torch.Tensor:
    h, w = _frame_size(frames[0].shape[0], frames[0].shape[1], n, spec)
    out = torch.empty((n, 3, h, w), dtype=torch.uint8)
    for i, pixels in enumerate(frames):
        out[i] = _resize_frame(pixels, (h, w))
    return out


def _video_meta(native_fps: float, total: int, idx: list[int], height: int, width: int) -> dict:
    return {"fps": native_fps, "total_num_frames": total, "frames_indices": idx, "duration": total / native_fps,
            "height": height, "width": width}


def video_tokens(num_frames: int, height: int, width: int, spec: VisionSpec) -> int:
    per_frame = max(min(spec.video_max_pixels, spec.video_total_pixels // max(num_frames, 1)), spec.video_min_pixels)
    h, w = _resize_dims(height, width, spec.factor, spec.video_min_pixels, per_frame)
    return math.ceil(num_frames / 2) * (h // spec.factor) * (w // spec.factor)


def _video_stream(container):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise MediaError(f"no video stream in the file (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads: same frames, decoded on every core
    return stream


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
