"""Procedural "photographs": deterministic synthetic scenes (gradients, shapes, textures) as pristine source images.

For checks that need many distinct source contents where no photo collection can be downloaded. Each scene is a
pure function of (seed, index); it must not touch global random state, and it writes nothing but the files asked for.
"""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Pristine scenes span the range: their 1st / 99th luminance percentiles are drawn from these intervals, so that an
# exposure or contrast distortion moves a scene away from a range every pristine scene shares (learnable), while the
# scene's mean brightness still varies with its content (dark or bright backgrounds and objects).
LOW_PERCENTILE = (6.0, 30.0)
HIGH_PERCENTILE = (220.0, 250.0)
KEY = (0.35, 0.65)
MEAN_LUMINANCE = (118.0, 138.0)
LAYER_KINDS = (0.45, 0.4, 0.15)  # flat, gradient, texture
TEXTURE_AMOUNT = (0.2, 0.6)
SUPERSAMPLE = 2  # drawn at 2x and downscaled: anti-aliased edges, as a camera's optics give


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, 0x5CE7E]))


def _colour(rng: np.random.Generator, key: float) -> np.ndarray:
    """A random RGB colour whose brightness centres on `key` (0 dark .. 1 bright)."""
    base = np.clip(rng.normal(key, 0.25), 0.02, 0.98)
    return np.clip(base + rng.normal(0.0, 0.18, 3), 0.0, 1.0) * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """A smooth random field in [0, 1]: bilinear upsampling of a coarse random grid (value noise)."""
    cells = max(2, int(size / scale))
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), "L")
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey pattern in [0, 1] of size x size: stripes, checks, a grating, value noise or fine grain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = int(rng.integers(5))
    period = float(rng.uniform(6, 30)) * SUPERSAMPLE
    angle = float(rng.uniform(0, math.pi))
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 0:  # stripes
        return ((u // (period / 2)) % 2).astype(np.float32)
    if kind == 1:  # checks
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        return (((u // (period / 2)) + (v // (period / 2))) % 2).astype(np.float32)
    if kind == 2:  # sinusoidal grating
        return 0.5 + 0.5 * np.sin(2 * math.pi * u / period).astype(np.float32)
    if kind == 3:  # value noise (clouds, foliage)
        return 0.6 * _smooth_noise(rng, size, period) + 0.4 * _smooth_noise(rng, size, period / 3)
    return _smooth_noise(rng, size, 1.5 * SUPERSAMPLE)  # fine grain (sand, fabric)


def _layer(rng: np.random.Generator, size: int, key: float) -> np.ndarray:
    """A full-size RGB fill: flat, a two-colour gradient, or a texture between two colours."""
    c1, c2 = _colour(rng, key), _colour(rng, key)
    kind = int(rng.choice(3, p=LAYER_KINDS))
    if kind == 0:
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    if kind == 1:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        angle = float(rng.uniform(0, 2 * math.pi))
        t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    else:
        amount = float(rng.uniform(*TEXTURE_AMOUNT))
        t = 0.5 + amount * (_texture(rng, size)[..., None] - 0.5)
    return (1 - t) * c1 + t * c2


def _mask(rng: np.random.Generator, size: int) -> Image.Image:
    """A random shape: rectangle, ellipse, polygon or thick line."""
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    kind = int(rng.integers(4))
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    w, h = rng.uniform(0.15, 0.6, 2) * size
    if kind == 0:
        d.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=255)
    elif kind == 1:
        d.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=255)
    elif kind == 2:
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.3, 1.0, n) * max(w, h) / 2
        d.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=255)
    else:
        x2, y2 = rng.uniform(0, 1, 2) * size
        d.line([(cx, cy), (x2, y2)], fill=255, width=int(rng.uniform(0.02, 0.08) * size))
    return m


def _exposure_gamma(arr: np.ndarray, target: float) -> float:
    """The gamma g with mean luminance of arr**g equal to target (bisection on log g; the mean falls as g grows)."""
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    lo, hi = math.log(0.05), math.log(20.0)
    for _ in range(30):
        mid = (lo + hi) / 2
        if float((arr ** math.exp(mid) @ luma).mean()) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def render_scene(seed: int, index: int, size: int = 112) -> Image.Image:
    """Scene `index` of the family `seed`: a background and 3-8 objects, each flat, gradient or textured, drawn at
    SUPERSAMPLE x and downscaled, then its luminance range stretched to the pristine range."""
    rng = _rng(seed, index)
    big = size * SUPERSAMPLE
    key = float(rng.uniform(*KEY))  # the scene's overall brightness
    canvas = _layer(rng, big, key)
    for _ in range(int(rng.integers(3, 9))):
        mask = np.asarray(_mask(rng, big), np.float32)[..., None] / 255.0
        canvas = canvas * (1 - mask) + _layer(rng, big, float(rng.uniform(0.05, 0.95))) * mask
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    arr = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), np.float32)
    luma = arr @ np.array([0.299, 0.587, 0.114], np.float32)
    lo, hi = np.percentile(luma, [1, 99])
    new_lo, new_hi = rng.uniform(*LOW_PERCENTILE), rng.uniform(*HIGH_PERCENTILE)
    arr = np.clip((arr - lo) * (new_hi - new_lo) / max(hi - lo, 1.0) + new_lo, 0, 255)
    # "auto-exposure": the tone curve (gamma) that puts the mean luminance at a well-exposed level
    arr = 255.0 * (arr / 255.0) ** _exposure_gamma(arr / 255.0, float(rng.uniform(*MEAN_LUMINANCE)) / 255.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def _write_one(job: tuple[int, int, int, str]) -> None:
    seed, index, size, path = job
    render_scene(seed, index, size).save(path, "PNG", compress_level=1)


def write_scenes(out_dir: str | Path, seed: int, indices, size: int = 112, prefix: str = "scene",
                 workers: int = 1) -> list[Path]:
    """Render the scenes `indices` of family `seed` as PNG files `<prefix><index:04d>.png`; return their paths.
    The files do not depend on `workers` (each scene is a function of its own index)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, index, size, str(out / f"{prefix}{index:04d}.png")) for index in indices]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            pool.map(_write_one, jobs, chunksize=8)
    else:
        for job in jobs:
            _write_one(job)
    return [Path(job[3]) for job in jobs]
