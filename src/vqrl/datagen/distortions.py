"""Twelve synthetic distortion families at five severities each, as pure functions on RGB PIL images.

Must not touch files, global random state or anything outside the image it is given: randomness comes only from
the caller's numpy Generator, so the same (image, family, severity, rng state) always gives the same pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Distortion:
    """One family: its parameter per severity 1..5 and the function that applies one parameter value."""

    name: str
    group: str
    param: str
    levels: tuple
    fn: Callable[[Image.Image, object, np.random.Generator], Image.Image]
    description: str


def _to_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def _gaussian_blur(img, sigma, rng):
    return _to_image(ndimage.gaussian_filter(_to_float(img), sigma=(sigma, sigma, 0), mode="reflect"))


def _line_kernel(length: int, angle: float) -> dict[tuple[int, int], float]:
    """Offsets (dy, dx) -> weight of a straight line of `length` px through the centre at `angle` radians."""
    half = (length - 1) / 2
    t = np.linspace(-half, half, 4 * length)
    dx = np.rint(t * math.cos(angle)).astype(int)
    dy = np.rint(-t * math.sin(angle)).astype(int)
    offsets = sorted(set(zip(dy.tolist(), dx.tolist())))
    return {o: 1.0 / len(offsets) for o in offsets}


def _motion_blur(img, length, rng):
    # A sum of shifted copies is exact and cheap for a sparse line kernel (no FFT round-off, no O(L^2) taps).
    angle = float(rng.uniform(0.0, math.pi))
    kernel = _line_kernel(int(length), angle)
    pad = int(length) // 2 + 1
    arr = np.pad(_to_float(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = img.height, img.width
    out = np.zeros((h, w, 3), dtype=np.float32)
    for (dy, dx), weight in kernel.items():
        out += weight * arr[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return _to_image(out)


def _gaussian_noise(img, sigma, rng):
    arr = _to_float(img)
    return _to_image(arr + rng.normal(0.0, sigma, arr.shape).astype(np.float32))


def _impulse_noise(img, fraction, rng):
    arr = np.array(img, dtype=np.uint8)
    hit = rng.random(arr.shape[:2]) < fraction
    salt = rng.random(arr.shape[:2]) < 0.5
    arr[hit & salt] = 255
    arr[hit & ~salt] = 0
    return Image.fromarray(arr, "RGB")


def _encode_decode(img: Image.Image, fmt: str, **params) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def _jpeg(img, quality, rng):
    return _encode_decode(img, "JPEG", quality=int(quality), subsampling=2, optimize=False)


def _jpeg2000(img, ratio, rng):
    # OpenJPEG needs each dimension >= 2**(resolutions-1); small crops get fewer wavelet levels.
    levels = max(1, min(6, int(math.log2(max(1, min(img.size))))))
    return _encode_decode(
        img, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)], irreversible=True,
        num_resolutions=levels,
    )


def _brighten(img, gamma, rng):
    return _to_image(255.0 * (_to_float(img) / 255.0) ** (1.0 / gamma))


def _darken(img, gamma, rng):
    return _to_image(255.0 * (_to_float(img) / 255.0) ** gamma)


def _luma(arr: np.ndarray) -> np.ndarray:
    return arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _contrast_loss(img, factor, rng):
    arr = _to_float(img)
    mean = float(_luma(arr).mean())
    return _to_image(mean + (arr - mean) * factor)


def _saturation_loss(img, factor, rng):
    arr = _to_float(img)
    gray = _luma(arr)[..., None]
    return _to_image(gray + (arr - gray) * factor)


def _color_quantization(img, colors, rng):
    quantized = img.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return quantized.convert("RGB")


def _pixelation(img, block, rng):
    w, h = img.size
    small = img.resize((max(1, math.ceil(w / block)), max(1, math.ceil(h / block))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


_TABLE = [
    ("gaussian_blur", "blur", "sigma (px)", (1.0, 2.0, 3.5, 5.5, 8.0), _gaussian_blur,
     "Gaussian low-pass filter"),
    ("motion_blur", "blur", "line length (px), random angle", (5, 9, 15, 23, 33), _motion_blur,
     "average along a straight line at a random angle (camera shake)"),
    ("gaussian_noise", "noise", "sigma (of 255)", (6.0, 12.0, 20.0, 32.0, 48.0), _gaussian_noise,
     "additive white Gaussian noise, independent per channel"),
    ("impulse_noise", "noise", "fraction of pixels", (0.01, 0.03, 0.06, 0.11, 0.18), _impulse_noise,
     "salt-and-pepper: pixels set to black or white"),
    ("jpeg_compression", "compression", "JPEG quality", (30, 16, 9, 5, 2), _jpeg,
     "JPEG encode/decode in memory (4:2:0 chroma)"),
    ("jpeg2000_compression", "compression", "compression ratio", (24, 48, 96, 160, 256), _jpeg2000,
     "JPEG 2000 (OpenJPEG, irreversible wavelet) encode/decode in memory"),
    ("brighten", "exposure", "gamma (out = in^(1/g))", (1.3, 1.6, 2.0, 2.6, 3.4), _brighten,
     "over-exposure: brightening gamma curve"),
    ("darken", "exposure", "gamma (out = in^g)", (1.3, 1.6, 2.0, 2.6, 3.4), _darken,
     "under-exposure: darkening gamma curve"),
    ("contrast_loss", "contrast", "contrast kept", (0.7, 0.5, 0.35, 0.22, 0.12), _contrast_loss,
     "pull every pixel towards the mean luminance"),
    ("saturation_loss", "colour", "saturation kept", (0.6, 0.4, 0.25, 0.1, 0.0), _saturation_loss,
     "blend towards the luminance (0 = greyscale)"),
    ("color_quantization", "colour", "palette colours", (48, 24, 12, 6, 3), _color_quantization,
     "median-cut palette without dithering"),
    ("pixelation", "structure", "block size (px)", (2, 3, 5, 8, 12), _pixelation,
     "box-average blocks, enlarged with nearest neighbour"),
]

DISTORTIONS: dict[str, Distortion] = {
    name: Distortion(name, group, param, levels, fn, description)
    for name, group, param, levels, fn, description in _TABLE
}
FAMILIES: tuple[str, ...] = tuple(DISTORTIONS)
# Families that change nothing on an image without colour; the generator avoids them for greyscale inputs.
COLOUR_ONLY = frozenset({"saturation_loss"})


def apply(img: Image.Image, family: str, severity: int, rng: np.random.Generator) -> Image.Image:
    """Return a new RGB image: `img` distorted by `family` at `severity` (1 slight .. 5 extreme)."""
    if family not in DISTORTIONS:
        raise ValueError(f"unknown distortion {family!r}; choose from {', '.join(FAMILIES)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer 1..5, got {severity!r}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    spec = DISTORTIONS[family]
    return spec.fn(img, spec.levels[severity - 1], rng)


def markdown_table() -> str:
    """The family table for docs/perception.md, generated so the docs cannot drift from the code."""
    lines = ["| family | group | parameter | severity 1..5 | what it does |", "|---|---|---|---|---|"]
    for d in DISTORTIONS.values():
        levels = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in d.levels)
        lines.append(f"| `{d.name}` | {d.group} | {d.param} | {levels} | {d.description} |")
    return "\n".join(lines)
