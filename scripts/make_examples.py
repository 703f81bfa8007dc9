"""Rebuild examples/: degraded copies of the shipped photographs, two short videos, and the seed-format JSON files.

The MOS values here are illustrative (derived from how hard each copy was degraded), not human ratings; they exist
so the demo and tests have a signal to learn. Run: `python scripts/make_examples.py` (deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1] / "examples"
PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "grass", "hubble", "rocket"]
QUESTION = ("What is your overall rating on the quality of this picture? The rating should be a float between 1 and "
            "5, rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent "
            "quality.")
VIDEO_QUESTION = QUESTION.replace("picture", "video")


def degrade(img: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    """level 0 = untouched; 1..3 = stronger blur + noise + JPEG."""
    if level == 0:
        return img
    img = img.filter(ImageFilter.GaussianBlur(radius=level * 1.2))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6 * level, (img.height, img.width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def write_video(path: Path, photo: Image.Image, level: int, rng: np.random.Generator, frames: int = 16) -> None:
    """A slow pan across `photo` at 8 fps, 160x112, H.264 (or MPEG-4 if libx264 is missing)."""
    w, h = 160, 112
    base = photo.resize((int(photo.width * h * 1.4 / photo.height), int(h * 1.4)))
    with av.open(str(path), "w") as out:
        try:
            stream = out.add_stream("libx264", rate=8)
            stream.options = {"crf": "28", "preset": "veryslow"}
        except Exception:  # noqa: BLE001
            stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            x = int((base.width - w) * t / (frames - 1))
            frame = degrade(base.crop((x, 10, x + w, 10 + h)), level, rng)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main() -> None:
    rng = np.random.default_rng(0)
    (ROOT / "images" / "degraded").mkdir(parents=True, exist_ok=True)
    (ROOT / "videos").mkdir(parents=True, exist_ok=True)
    records = []
    mos_by_level = {0: 4.6, 1: 3.4, 2: 2.3, 3: 1.4}
    for i, name in enumerate(PHOTOS):
        photo = Image.open(ROOT / "images" / f"{name}.jpg").convert("RGB")
        photo.thumbnail((256, 256))
        for level in (0, 1 + i % 3):
            rel = f"images/{name}.jpg" if level == 0 else f"images/degraded/{name}_l{level}.jpg"
            if level:
                degrade(photo, level, rng).save(ROOT / rel, quality=[0, 60, 30, 12][level])
            mos = round(mos_by_level[level] + float(rng.uniform(-0.2, 0.2)), 2)
            records.append({"image": rel, "solution": mos, "question": QUESTION, "type": "scoring_image"})
    for name, level in (("rocket", 0), ("coffee", 2)):
        rel = f"videos/{name}_pan_l{level}.mp4"
        write_video(ROOT / rel, Image.open(ROOT / "images" / f"{name}.jpg").convert("RGB"), level, rng)
        records.append({"video": rel, "solution": mos_by_level[level], "question": VIDEO_QUESTION,
                        "type": "scoring_video"})
    held_out = {"hubble", "grass"}  # whole photographs held out, so evaluation never sees a training image
    train = [r for r in records if not any(h in r.get("image", r.get("video", "")) for h in held_out)]
    test = [r for r in records if r not in train]
    (ROOT / "RL_examples.json").write_text(json.dumps(train, indent=2) + "\n")
    (ROOT / "RL_examples_eval.json").write_text(json.dumps(test, indent=2) + "\n")
    print(f"wrote {len(train)} training and {len(test)} held-out records under {ROOT}")


if __name__ == "__main__":
    main()
