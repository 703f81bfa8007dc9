"""How well can the learning check's tiny model see quality at all? A supervised probe on the check's own task: the
tiny Qwen2.5-VL's vision tower (with its merger) encodes each image, a small head (mean and std of the merged tokens,
then an MLP) regresses the MOS on the train split (Adam, MSE), and held-out / test SRCC is reported. With the tower
frozen (as the check trains it: merger only), the probe bounds what GRPO can extract from the tower's random
features; with the tower trainable, it says what a trainable tower could reach. Supervised regression is a far
cleaner signal than GRPO's sampled rewards, so these are upper references, not predictions (docs/learning.md).

    python docs/learning/feature_probe.py --data /tmp/probe_data --data_seed 1 --seeds 0 1 2 --out probe.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from scipy.stats import spearmanr

from vqrl.learning.task import SPLITS, TaskSpec, build_or_load_task
from vqrl.learning.warmup import load, make_model


def encode(processor, data: Path, split: str):
    records = json.loads((data / f"{split}.json").read_text())
    images = [Image.open(data / r["image"]).convert("RGB") for r in records]
    enc = processor.image_processor(images=images, return_tensors="pt")
    per = int(enc["image_grid_thw"][0].prod())  # every image has the same size: equal patch rows each
    return enc["pixel_values"].view(len(records), per, -1), enc["image_grid_thw"], torch.tensor(
        [float(r["solution"]) for r in records])


POOLS = ("mean_std", "mean")


class Probe(torch.nn.Module):
    """pool "mean_std": the head reads the merged tokens' mean and spread; "mean": their mean only (what a language
    model's attention averages most directly; a spread across tokens it has to build per token first)."""

    def __init__(self, model, train_tower: bool, pool: str = "mean_std"):
        super().__init__()
        self.model, self.pool = model.model, pool
        for name, p in self.model.visual.named_parameters():
            p.requires_grad_(train_tower or name.startswith("merger."))
        width = self.model.visual.merger.mlp[-1].out_features
        pooled = width * (2 if pool == "mean_std" else 1)
        self.head = torch.nn.Sequential(torch.nn.Linear(pooled, 128), torch.nn.GELU(), torch.nn.Linear(128, 1))

    def forward(self, pixels, grids):
        feats = self.model.get_image_features(pixels.flatten(0, 1), grids).pooler_output
        tokens = torch.stack(list(feats))  # images x merged tokens x width
        pooled = [tokens.mean(1), tokens.std(1)] if self.pool == "mean_std" else [tokens.mean(1)]
        return self.head(torch.cat(pooled, -1))[:, 0]


def run(data: Path, seed: int, train_tower: bool, steps: int, lr: float, batch: int, size: int = 112,
        vision_hidden_size: int = 32, vision_depth: int = 2, pool: str = "mean_std", save: Path | None = None) -> dict:
    torch.manual_seed(seed)
    path = make_model(Path(tempfile.mkdtemp()) / "m", seed=seed, max_pixels=size * size, zero_merger=False,
                      vision_hidden_size=vision_hidden_size, vision_depth=vision_depth)
    model, processor = load(path)
    splits = {s: encode(processor, data, s) for s in SPLITS}
    probe = Probe(model, train_tower, pool)
    opt = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=lr)
    pixels, grids, mos = splits["train"]
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(mos), (batch,), generator=gen)
        loss = torch.nn.functional.mse_loss(probe(pixels[idx], grids[idx]), mos[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {"seed": seed, "train_tower": train_tower, "steps": steps, "vision_hidden_size": vision_hidden_size,
           "vision_depth": vision_depth, "pool": pool, "seconds": round(time.perf_counter() - started)}
    with torch.no_grad():
        for split, (px, gr, y) in splits.items():
            pred = torch.cat([probe(px[i:i + 256], gr[i:i + 256]) for i in range(0, len(y), 256)])
            out[split] = round(float(spearmanr(pred.numpy(), y.numpy())[0]), 3)
    if save is not None:  # the whole model, its tower and merger trained (lm_probe.py --init reads it)
        model.save_pretrained(save)
        processor.save_pretrained(save)
        out["saved"] = str(save)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the task's folder (built here if it has no task.json)")
    p.add_argument("--data_seed", type=int, default=1)
    p.add_argument("--train_sources", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vision_hidden_size", type=int, default=32, help="the tower's width (the check's: 32)")
    p.add_argument("--vision_depth", type=int, default=2, help="the tower's blocks (the check's: 2)")
    p.add_argument("--towers", nargs="+", default=["frozen", "trainable"], choices=["frozen", "trainable"])
    p.add_argument("--pool", default="mean_std", choices=POOLS, help="what the head reads of the merged tokens")
    p.add_argument("--save", help="save each trained model into <save>/<tower>_seed<seed>")
    p.add_argument("--out", help="write every result here (JSON)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = Path(a.data)
    task = build_or_load_task(TaskSpec(train_sources=a.train_sources, seed=a.data_seed), data, a.workers)
    size = task["spec"]["size"]
    results = [run(data, seed, tower == "trainable", a.steps, a.lr, a.batch, size, a.vision_hidden_size,
                   a.vision_depth, a.pool, Path(a.save) / f"{tower}_seed{seed}" if a.save else None)
               for tower in a.towers for seed in a.seeds]
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))


if __name__ == "__main__":
    main()
