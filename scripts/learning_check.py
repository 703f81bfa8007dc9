#!/usr/bin/env python
"""Learning check: does vqrl's GRPO teach a model from scratch to judge image quality?

No pretrained model can be downloaded here, so the check starts from a randomly initialised tiny Qwen2.5-VL, where
nothing but our pipeline can explain a gain:

1. data   - `vqrl make-perception-data` distorts the shipped photographs (examples/images); MOS comes from the
            distortion severity. The scoring records are split BY SOURCE PHOTO into train and held-out files.
2. model  - `vqrl tiny-model` (random weights, local tokenizer), size chosen by flags; with --projector zero (the
            presets) the vision merger starts at zero and is frozen in the warm-up: the warm-up cannot see images.
3. warm-up- TRL's SFTTrainer teaches ONLY the answer format, with a uniformly RANDOM score as every target, e.g.
            `<think>I look at the image.</think><answer>Score: 3.27</answer>`. Prompts are built by the same code as
            GRPO's (vqrl.data.dataset.RowBuilder -> vqrl.data.prompts.build_messages). Afterwards the format reward is
            ~1 and held-out SRCC ~0: the model writes scores but knows nothing about quality.
4. GRPO   - vqrl's `standard` trainer from the warm start with `format` + `score_l1` rewards, the held-out set scored
            with vqrl's eval code (greedy and expected-score modes) every few steps; then the same with `refine`.
5. output - <out>/results.json (every eval point: step, srcc, plcc, reward, ...), <out>/curves.png, a summary on
            stdout, and a full `vqrl eval` of each final model under <out>/<trainer>/eval_<mode>/.

Presets: --quick (the CPU test, ~9 minutes on 2 cores) and --gpu (one H200, ~6.5 minutes for standard). Any flag given
explicitly overrides the preset. See docs/learning.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Preset values; a flag given on the command line wins. "quick" is the CPU test preset (also the default).
PRESETS = {
    # 3 x 3 crops of every photo (45 contents, 18 of them held out), darkened at 4 random severities; a frozen random
    # vision tower whose merger (projector) starts at zero and is frozen in the warm-up, so the warm-up model cannot
    # see the image. GRPO trains the merger and the language model. KL to the warm-up (beta 0.1) and TRL's entropy
    # bonus keep the score digits explored until the image features are learned (without them the policy collapses
    # onto the middle of the scale first). See docs/learning.md for what each choice was measured against.
    "quick": dict(
        device="cpu", bf16=False, threads=1, train_vision=False, projector="zero", train_merger=True, sft_targets="random", per_image=4, crops=3, max_side=112,
        region_prob=0.0, families=["darken"],
        hidden_size=128, layers=2, head_dim=32, vision_hidden_size=32, vision_depth=2, max_pixels=112 * 112,
        sft_steps=200, sft_lr=2e-3, sft_batch=16,
        steps=150, lr=1e-3, num_generations=4, prompts_per_step=16, temperature=1.0, beta=0.1, scale_rewards="group",
        entropy_coef=0.02, lr_schedule="cosine",
        max_completion_length=32, eval_every=10, refine_steps=20, warmup_steps=10, trainers="standard,refine",
    ),
    # the same task and model on one GPU, with 4x the prompts per step (the gradient is much less noisy)
    "gpu": dict(
        device="cuda", bf16=False, threads=None, train_vision=False, projector="zero", train_merger=True, sft_targets="random", per_image=4, crops=3,
        max_side=112, region_prob=0.0, families=["darken"],
        hidden_size=128, layers=2, head_dim=32, vision_hidden_size=32, vision_depth=2, max_pixels=112 * 112,
        sft_steps=200, sft_lr=2e-3, sft_batch=16,
        steps=250, lr=1e-3, num_generations=4, prompts_per_step=64, temperature=1.0, beta=0.1, scale_rewards="group",
        entropy_coef=0.02, lr_schedule="constant_with_warmup",
        max_completion_length=32, eval_every=25, refine_steps=80, warmup_steps=10, trainers="standard,refine",
    ),
}
# a run's result: held-out SRCC after the warm-up (step 0) against the mean of its last LAST_EVALS evaluations
LAST_EVALS = 3
THINK_TEXT = "I look at the image."
EVAL_MODES = ("expected", "greedy")

log = logging.getLogger("learning_check")


# ---------------------------------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="CPU test preset (the default preset)")
    preset.add_argument("--gpu", action="store_true", help="one-GPU preset: larger data, model and more steps")
    p.add_argument("--out", default=str(ROOT / "outputs" / "learning_check"), help="output folder (recreated)")
    p.add_argument("--images", default=str(ROOT / "examples" / "images"), help="pristine photographs")
    p.add_argument("--heldout", nargs="+", default=["chelsea", "rocket"],
                   help="source photos (file stems) whose variants form the held-out set; the rest train")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (weights stay float32); cuda only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (quick preset: 1, much faster on a busy 2-core box)")
    # data
    p.add_argument("--per_image", type=int, help="distorted variants per photo")
    p.add_argument("--max_side", type=int, help="photos (or crops) are downscaled to this long side before distortion")
    p.add_argument("--crops", type=int, help="cut each photo into a crops x crops grid of max_side px squares, each "
                                             "its own content (1: whole photos)")
    p.add_argument("--region_prob", type=float, help="fraction of local (boxed) distortions (0: all global)")
    p.add_argument("--families", nargs="+", help="restrict the distortion families")
    p.add_argument("--record_question", action="store_true",
                   help="keep the generator's long per-record question (default: drop it, so every stage uses "
                        "vqrl.data.prompts' short default question: ~60 fewer prompt tokens)")
    # model
    p.add_argument("--hidden_size", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--head_dim", type=int)
    p.add_argument("--max_pixels", type=int, help="image pixel budget of the processor")
    p.add_argument("--vision_hidden_size", type=int, help="vision tower width")
    p.add_argument("--vision_depth", type=int, help="vision tower blocks")
    p.add_argument("--projector", choices=["random", "zero"],
                   help="zero: the merger's output layer starts at zero and stays frozen in the warm-up, so the "
                        "warm-up model cannot see the image at all (its held-out scores are constant: SRCC 0)")
    p.add_argument("--train_merger", action=argparse.BooleanOptionalAction, default=None,
                   help="GRPO trains the merger (vision-to-language projector) while the tower stays frozen")
    p.add_argument("--train_vision", action=argparse.BooleanOptionalAction, default=None,
                   help="train the (random) vision tower too; default off: see docs/learning.md")
    # warm-up
    p.add_argument("--sft_steps", type=int)
    p.add_argument("--sft_lr", type=float)
    p.add_argument("--sft_batch", type=int)
    p.add_argument("--sft_targets", choices=["random", "random_per_image", "mos"],
                   help="warm-up targets: a fresh uniform draw per example | one fixed uniform draw per image file "
                        "(teaches the model to read the image, not quality) | the true MOS (a supervised reference)")
    p.add_argument("--warm_start", help="skip the warm-up and start GRPO from this model folder (e.g. <out>/sft of an "
                                        "earlier run with the same data and model flags)")
    # GRPO
    p.add_argument("--trainers", help="comma-separated: standard,refine (refine starts from the same warm-up); "
                                      "'' = the warm-up only, evaluated on held-out and train records")
    p.add_argument("--steps", type=int, help="GRPO steps of the standard trainer")
    p.add_argument("--refine_steps", type=int, help="GRPO steps of the refine trainer (0: skip it)")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr_schedule", choices=["constant_with_warmup", "cosine"],
                   help="cosine: decay to 0 by the last step, so the last evaluations see a settled policy")
    p.add_argument("--warmup_steps", type=int, help="GRPO learning-rate warm-up (a fresh Adam's first steps are noisy)")
    p.add_argument("--num_generations", type=int)
    p.add_argument("--prompts_per_step", type=int, help="distinct prompts per step (x num_generations completions)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--beta", type=float, help="KL coefficient")
    p.add_argument("--entropy_coef", type=float,
                   help="TRL's entropy bonus: keeps the score digits explored while the image features are learned")
    p.add_argument("--scale_rewards", choices=["group", "batch", "none"],
                   help="TRL's advantage scaling; batch: a group whose completions all score alike gets small "
                        "advantages instead of its noise scaled up to unit variance")
    p.add_argument("--max_completion_length", type=int)
    p.add_argument("--grpo_arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other vqrl/TRL GRPO option for both trainers (repeatable), e.g. entropy_coef=0.01")
    p.add_argument("--reward_funcs", nargs="+", default=["format", "score_l1"])
    p.add_argument("--eval_every", type=int, help="evaluate the held-out set every this many steps")
    p.add_argument("--metric", choices=EVAL_MODES, default="expected",
                   help="the eval mode reported as srcc/plcc (both modes are always recorded)")
    p.add_argument("--eval_train", type=int, default=0,
                   help="also score this many train records at every eval point (diagnostics: fit vs generalisation)")
    p.add_argument("--no_final_eval", action="store_true", help="skip the full `vqrl eval` of the final models")
    args = p.parse_args(argv)
    args.preset = "gpu" if args.gpu else "quick"
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.trainers = [t for t in str(args.trainers).split(",") if t]
    if args.refine_steps == 0 and "refine" in args.trainers:
        args.trainers.remove("refine")
    if args.projector == "zero" and not (args.train_merger or args.train_vision):
        p.error("--projector zero needs --train_merger (or --train_vision): otherwise GRPO never sees the image")
    if args.bf16 and args.device != "cuda":
        p.error("--bf16 needs --device cuda")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# 1. data
# ---------------------------------------------------------------------------------------------------------------------
CROP_SEP = "__crop"


def content_key(sample_id: str) -> str:
    """The image a perception scoring record distorts: `<key>_ref_score` or `<key>_<NNN>_score` -> `<key>`."""
    return re.sub(r"_(ref|\d{3})_score$", "", sample_id)


def source_key(sample_id: str) -> str:
    """The source photo of a record, where a crop's key is `<photo>__crop<k>` (crops of one photo share its source,
    so they stay on one side of the split)."""
    return content_key(sample_id).split(CROP_SEP)[0]


def make_crops(images_dir: str, out: Path, grid: int, side: int) -> Path:
    """Each photo, scaled so its short side is grid * side px, cut into grid x grid non-overlapping crops of side px:
    many contents per photo, so that what is learned is the distortion, not the five training photos."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(images_dir).iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        img = Image.open(path).convert("RGB")
        scale = grid * side / min(img.size)
        img = img.resize((max(grid * side, round(img.width * scale)), max(grid * side, round(img.height * scale))),
                         Image.BICUBIC)
        k = 0
        for row in range(grid):
            for col in range(grid):
                box = (col * side, row * side, (col + 1) * side, (row + 1) * side)
                img.crop(box).save(out / f"{path.stem}{CROP_SEP}{k:02d}.png")
                k += 1
    return out


def make_data(args, out: Path) -> dict:
    from vqrl.datagen.perception import make_perception_data

    data = out / "data"
    images = args.images
    if args.crops > 1:
        images = str(make_crops(args.images, out / "crops", args.crops, args.max_side))
    summary = make_perception_data(images, data, per_image=args.per_image, seed=args.seed, workers=1,
                                   region_prob=args.region_prob, max_side=args.max_side, families=args.families,
                                   progress=False)
    records = json.loads((data / "scoring.json").read_text())
    keys = sorted({source_key(r["sample_id"]) for r in records})
    n_crops = {k: len({content_key(r["sample_id"]) for r in records if source_key(r["sample_id"]) == k})
               for k in keys}
    missing = [k for k in args.heldout if k not in keys]
    if missing:
        raise SystemExit(f"--heldout {missing} not among the photos {keys}")
    if not args.record_question:
        records = [{k: v for k, v in r.items() if k != "question"} for r in records]
    train = [r for r in records if source_key(r["sample_id"]) not in args.heldout]
    heldout = [r for r in records if source_key(r["sample_id"]) in args.heldout]
    for name, recs in (("train", train), ("heldout", heldout)):
        (data / f"{name}.json").write_text(json.dumps(recs, indent=1))
    return {"dir": str(data), "train": str(data / "train.json"), "heldout": str(data / "heldout.json"),
            "n_train": len(train), "n_heldout": len(heldout), "weak_variants": summary["weak"], "crops": n_crops,
            "train_photos": [k for k in keys if k not in args.heldout], "heldout_photos": list(args.heldout)}


# ---------------------------------------------------------------------------------------------------------------------
# 2. model
# ---------------------------------------------------------------------------------------------------------------------
def make_model(args, out: Path) -> Path:
    import torch
    from transformers import AutoProcessor

    from vqrl.models.tiny import make_tiny_model

    path = make_tiny_model("qwen2_5_vl", out / "model_init", head_dim=args.head_dim, hidden_size=args.hidden_size,
                           layers=args.layers, seed=args.seed, vision_hidden_size=args.vision_hidden_size,
                           vision_depth=args.vision_depth)
    # One pixel budget for every stage: the warm-up, GRPO (also given --max_pixels) and eval read the saved processor.
    processor = AutoProcessor.from_pretrained(path)
    processor.image_processor.size["longest_edge"] = args.max_pixels
    processor.image_processor.size["shortest_edge"] = min(processor.image_processor.size["shortest_edge"],
                                                          args.max_pixels)
    processor.save_pretrained(path)
    if args.projector == "zero":
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(path)
        last = [m for m in model.model.visual.merger.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        model.save_pretrained(path)
    return path


def load(path, args):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                        attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    return model.to(args.device), processor


# ---------------------------------------------------------------------------------------------------------------------
# 3. warm-up: the format only, with random scores
# ---------------------------------------------------------------------------------------------------------------------
def row_builder(data_file: str, processor, think: bool = True, with_nothink: bool = False):
    """The GRPO data path (records -> RowBuilder -> build_messages), so warm-up prompts equal GRPO prompts."""
    from vqrl.data.dataset import DataConfig, MediaLoader, RowBuilder, load_checked_records
    from vqrl.data.media import VisionSpec
    from vqrl.data.prompts import PromptConfig

    records = load_checked_records(DataConfig([data_file], image_root=[str(Path(data_file).parent)]))
    return RowBuilder(records, MediaLoader(VisionSpec.for_processor(processor), None, None), PromptConfig(think=think),
                      with_nothink=with_nothink)


def format_target(score: float, think: bool = True) -> str:
    from vqrl.data.prompts import SCORE_PREFIX, format_score

    answer = f"{SCORE_PREFIX}{format_score(score)}</answer>"
    return f"<think>{THINK_TEXT}</think>{answer}" if think else answer


class RandomScoreSFT:
    """Prompt-completion rows for TRL's vision collator: a record's GRPO prompt, a format-correct answer whose score is
    drawn uniformly from [1, 5] independently of the image (fresh for every index, reproducible from the seed)."""

    def __init__(self, builder, length: int, seed: int, targets: str = "random"):
        self.builder, self.length, self.seed, self.targets = builder, length, seed, targets

    def __len__(self):
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + index)
        n = len(self.builder.records)
        row = self.builder.row(rng.randrange(n))
        images, prompt = [], []
        for message in row["prompt"]:  # TRL's collator wants images apart and `{"type": "image"}` placeholders
            parts = []
            for part in message["content"]:
                if part["type"] == "image":
                    images.append(part["image"])
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            prompt.append({"role": message["role"], "content": parts})
        if self.targets == "random":  # a fresh draw every time: the image says nothing about the target
            score = rng.uniform(1.0, 5.0)
        elif self.targets == "random_per_image":  # one fixed draw per image file: look at the image, learn nothing
            score = random.Random(f"{self.seed}:{row['image_path']}").uniform(1.0, 5.0)  # about its quality
        else:  # "mos": supervised, a reference point only
            score = float(row["solution"])
        completion = [{"role": "assistant", "content": [{"type": "text", "text": format_target(score)}]}]
        return {"prompt": prompt, "completion": completion, "images": images}

    def as_dataset(self):
        """A `datasets.Dataset` of indices whose rows are built on access (TRL skips preparing vision datasets)."""
        from datasets import Dataset

        ds = Dataset.from_dict({"index": list(range(self.length))})

        def transform(batch):
            rows = [self[i] for i in batch["index"]]
            return {key: [r[key] for r in rows] for key in rows[0]}

        ds.set_transform(transform)
        return ds


def warmup(args, model_path: Path, data: dict, out: Path) -> tuple[Path, dict]:
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    model, processor = load(model_path, args)
    if not args.train_vision:
        model.model.visual.requires_grad_(False)
    if args.projector == "zero":  # the warm-up must not see the image: its merger stays at zero
        model.model.visual.merger.requires_grad_(False)
    builder = row_builder(data["train"], processor)
    dataset = RandomScoreSFT(builder, args.sft_steps * args.sft_batch, args.seed, args.sft_targets).as_dataset()
    config = SFTConfig(
        output_dir=str(out / "sft_run"), max_steps=args.sft_steps, per_device_train_batch_size=args.sft_batch,
        learning_rate=args.sft_lr, lr_scheduler_type="cosine", warmup_steps=min(10, args.sft_steps // 10),
        weight_decay=0.0, logging_steps=max(1, args.sft_steps // 10), save_strategy="no", report_to="none",
        seed=args.seed, data_seed=args.seed, use_cpu=args.device == "cpu", bf16=bool(args.bf16),
        completion_only_loss=True, remove_unused_columns=False, gradient_checkpointing=False, max_length=None,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    result = trainer.train()
    path = out / "sft"
    trainer.save_model(str(path))
    processor.save_pretrained(str(path))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    info = {"steps": args.sft_steps, "seconds": round(time.perf_counter() - started, 1),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "train_loss": result.training_loss}
    del trainer, model
    return path, info


# ---------------------------------------------------------------------------------------------------------------------
# evaluation (vqrl's eval code on the in-memory model)
# ---------------------------------------------------------------------------------------------------------------------
class HeldoutEval:
    """Scores the held-out file with vqrl.eval.run's batch scorer and metrics, for any model already in memory."""

    def __init__(self, args, data: dict, processor, think: bool = True):
        from vqrl.data.dataset import MediaLoader
        from vqrl.data.media import VisionSpec
        from vqrl.data.prompts import PromptConfig
        from vqrl.eval.run import load_eval_records

        self.records, problems = load_eval_records([data["heldout"]], data["dir"], None)
        if problems:
            raise SystemExit("held-out records failed their checks: " + "; ".join(problems[:5]))
        self.processor = processor
        self.loader = MediaLoader(VisionSpec.for_processor(processor), data["dir"], None, cache_size=256)
        self.prompt_cfg = PromptConfig(think=think)
        self.ns = {mode: argparse.Namespace(mode=mode, num_samples=1, temperature=1.0, batch_size=32,
                                            max_new_tokens=args.max_completion_length) for mode in EVAL_MODES}

    def __call__(self, model) -> dict:
        import torch

        from vqrl.eval.metrics import compute_metrics
        from vqrl.eval.run import _score_batch

        was_training = model.training
        model.eval()
        out = {}
        try:
            for mode, ns in self.ns.items():
                preds = []
                with torch.no_grad():
                    for start in range(0, len(self.records), ns.batch_size):
                        batch = self.records[start:start + ns.batch_size]
                        preds += [s for s, _ in _score_batch(model, self.processor, batch, self.loader,
                                                             self.prompt_cfg, ns)]
                mos = [float(r["solution"]) for r in self.records]
                m = compute_metrics(mos, preds)
                out[mode] = {k: m[k] for k in ("srcc", "plcc", "krcc", "rmse", "parse_fail_rate")}
                out[mode]["pred_std"] = float(_std([p for p in preds if p is not None]))
                # ranking inside each held-out photo (the pooled SRCC also needs scores comparable across photos)
                per_photo = []
                for key in sorted({source_key(r["sample_id"]) for r in self.records}):
                    idx = [i for i, r in enumerate(self.records) if source_key(r["sample_id"]) == key]
                    per_photo.append(compute_metrics([mos[i] for i in idx], [preds[i] for i in idx])["srcc"])
                valid = [v for v in per_photo if v is not None]
                out[mode]["srcc_within"] = sum(valid) / len(valid) if valid else None
        finally:
            model.train(was_training)
        return out


def _std(xs):
    if len(xs) < 2:
        return 0.0
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def point(step: int, ev: dict, metric: str, reward: dict | None) -> dict:
    p = {"step": step, "srcc": ev[metric]["srcc"], "plcc": ev[metric]["plcc"]}
    for mode, m in ev.items():
        for k, v in m.items():
            p[f"{mode}_{k}"] = v
    p.update(reward or {})
    return p


# ---------------------------------------------------------------------------------------------------------------------
# 4. GRPO
# ---------------------------------------------------------------------------------------------------------------------
def grpo_flags(args, trainer: str, model_path: Path, data: dict, out_dir: Path, steps: int) -> list[str]:
    values = {
        "trainer": trainer, "model_name_or_path": str(model_path), "output_dir": str(out_dir),
        "image_root": data["dir"], "think": "true", "reward_funcs": args.reward_funcs,
        "max_steps": steps, "learning_rate": args.lr, "lr_scheduler_type": args.lr_schedule, "warmup_steps": args.warmup_steps,
        "weight_decay": 0.0, "max_grad_norm": 1.0,
        "per_device_train_batch_size": args.prompts_per_step * args.num_generations,
        "num_generations": args.num_generations, "temperature": args.temperature, "beta": args.beta,
        "scale_rewards": args.scale_rewards, "entropy_coef": args.entropy_coef,
        "max_completion_length": args.max_completion_length, "max_pixels": args.max_pixels,
        "freeze_vision_tower": "false" if args.train_vision else "true", "train_merger": str(bool(args.train_merger)).lower(),
        "gradient_checkpointing": "false",
        "logging_steps": 1, "report_to": "none", "save_strategy": "no", "seed": args.seed, "data_seed": args.seed,
        "use_cpu": "true" if args.device == "cpu" else "false", "bf16": "true" if args.bf16 else "false",
        "dtype": "float32", "heartbeat": "false", "disable_tqdm": "true", "log_completions": "false",
        # a 2-layer model decodes 32 tokens in a fraction of a second: compiling its decode step costs more than it saves
        "compiled_generation": "false",
    }
    for item in args.grpo_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--grpo_arg {item!r}: expected KEY=VALUE")
        values[key.lstrip("-")] = value
    argv = ["--data_files", data["train"]]
    for key, value in values.items():
        argv += [f"--{key}", *map(str, value)] if isinstance(value, (list, tuple)) else [f"--{key}", str(value)]
    return argv


def run_grpo(args, trainer_name: str, steps: int, start: Path, data: dict, evaluator_factory, out: Path) -> dict:
    from transformers import TrainerCallback

    from vqrl.grpo import build_trainer, parse

    started = time.perf_counter()
    run_dir = out / trainer_name
    cfg, model_args = parse(grpo_flags(args, trainer_name, start, data, run_dir, steps))
    trainer = build_trainer(cfg, model_args)
    evaluator = evaluator_factory(trainer.processing_class)
    points, logs = [], []

    def reward_since(step_from: int, step_to: int | None = None) -> dict:
        rows = [r for r in logs if step_from < r["step"] <= (step_to if step_to is not None else 10**9)]
        if not rows:
            return {}
        keys = {k for r in rows for k in r if k != "step"}
        return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(keys)}

    class Curves(TrainerCallback):
        def _eval(self, state, model):
            t = time.perf_counter()
            ev = evaluator(model)
            p = point(state.global_step, ev, args.metric, None)
            p["eval_seconds"] = round(time.perf_counter() - t, 2)
            p["elapsed"] = round(time.perf_counter() - started, 1)
            last = logs[-1] if logs else {}
            points.append(p)
            on_train = f" train srcc {_fmt(p['train_expected_srcc'])}" if "train_expected_srcc" in p else ""
            print(f"[{trainer_name}] step {p['step']:>4}  srcc {_fmt(p['expected_srcc'])} (expected) "
                  f"{_fmt(p['greedy_srcc'])} (greedy) within-photo {_fmt(p['expected_srcc_within'])} "
                  f"{_fmt(p['greedy_srcc_within'])}{on_train}  plcc {_fmt(p['plcc'])}  last reward {_fmt(last.get('reward'))}  "
                  f"format {_fmt(last.get('format'))}  {p['elapsed']:.0f}s", flush=True)

        def on_train_begin(self, a, state, control, model=None, **kw):
            self._eval(state, model)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                row = {"step": state.global_step, "reward": logs["reward"]}
                for name in args.reward_funcs + ["pd"]:
                    key = f"rewards/{name}/mean"
                    if key in logs:
                        row[name] = logs[key]
                if "reward_std" in logs:
                    row["reward_std"] = logs["reward_std"]
                logs_list.append(row)

        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step % args.eval_every == 0 or state.global_step == state.max_steps:
                self._eval(state, model)

    logs_list = logs
    trainer.add_callback(Curves())
    trainer.train()
    # reward of a point: mean over the rollouts since the previous point (step 0: the first batch, which the warm-up
    # model generated); rollouts of step s come from the model after s - 1 updates
    for i, p in enumerate(points):
        p.update(reward_since(points[i - 1]["step"], p["step"]) if i else reward_since(0, 1))
    final = run_dir / "final"
    trainer.save_model(str(final))
    trainer.processing_class.save_pretrained(str(final))
    seconds = round(time.perf_counter() - started, 1)
    del trainer
    return {"trainer": trainer_name, "steps": steps, "seconds": seconds, "points": points, "train_log": logs,
            "final_model": str(final), **verdict(points)}


def verdict(points: list[dict]) -> dict:
    """Held-out SRCC after the warm-up (the first point) and at the end (mean of the last LAST_EVALS points, so one
    lucky evaluation cannot pass the check), and the gain between them."""
    start = points[0]["srcc"] if points else None
    tail = [p["srcc"] for p in points[1:][-LAST_EVALS:] if p["srcc"] is not None]
    end = sum(tail) / len(tail) if tail else None
    return {"srcc_start": start, "srcc_end": end,
            "srcc_gain": None if start is None or end is None else end - start}


def _fmt(x) -> str:
    return "  -  " if x is None else f"{x:+.3f}"


# ---------------------------------------------------------------------------------------------------------------------
# 5. outputs
# ---------------------------------------------------------------------------------------------------------------------
def final_eval(args, run: dict, data: dict) -> dict:
    """The full `vqrl eval` (reload from disk, predictions.csv, metrics.json, scatter) of a final model."""
    from vqrl.eval.run import add_arguments, evaluate

    out = {}
    for mode in EVAL_MODES:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        ns = parser.parse_args(["--model", run["final_model"], "--data", data["heldout"], "--image_root", data["dir"],
                                "--mode", mode, "--device", args.device, "--dtype", "float32",
                                "--max_new_tokens", str(args.max_completion_length), "--batch_size", "32",
                                "--out", str(Path(run["final_model"]).parent / f"eval_{mode}")])
        m = evaluate(ns)["heldout"]
        out[mode] = {"srcc": m["srcc"], "plcc": m["plcc"], "parse_fail_rate": m["parse_fail_rate"]}
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"standard": "tab:blue", "refine": "tab:orange"}
    for name, run in results["runs"].items():
        c = colours.get(name)
        log_ = run["train_log"]
        if log_:
            ax_r.plot([r["step"] for r in log_], [r["reward"] for r in log_], color=c, alpha=0.3, linewidth=0.8)
            ax_r.plot([r["step"] for r in log_], _smooth([r["reward"] for r in log_]), color=c, label=f"{name} reward")
            if all("score_l1" in r for r in log_):
                ax_r.plot([r["step"] for r in log_], _smooth([r["score_l1"] for r in log_]), color=c, linestyle="--",
                          label=f"{name} score_l1")
        pts = run["points"]
        for mode, style in (("expected", "-"), ("greedy", ":")):
            ys = [p.get(f"{mode}_srcc") for p in pts]
            ax_s.plot([p["step"] for p in pts], [math.nan if y is None else y for y in ys], style, marker="o",
                      markersize=3, color=c, label=f"{name} ({mode})")
    ax_r.set(xlabel="GRPO step", ylabel="mean train reward", title="reward (format + score_l1)")
    ax_s.axhline(0, color="grey", linewidth=0.6)
    ax_s.set(xlabel="GRPO step", ylabel="held-out SRCC", title="held-out SRCC (photos never trained on)",
             ylim=(-0.5, 1.0))
    for ax in (ax_r, ax_s):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(results["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(ys, k: int = 5):
    return [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]


def summarize(results: dict) -> str:
    lines = [results["title"], f"warm-up: {results['warmup']['steps']} SFT steps, {results['warmup']['seconds']}s"]
    for name, run in results["runs"].items():
        pts = run["points"]
        if not pts:
            continue
        first, last = pts[0], pts[-1]
        best = max(pts, key=lambda p: p["srcc"] if p["srcc"] is not None else -9)
        lines.append(
            f"{name:>8}: {run['steps']} steps, {run['seconds']}s | held-out SRCC {_fmt(run['srcc_start'])} -> "
            f"{_fmt(run['srcc_end'])} (mean of the last {LAST_EVALS} evals; gain {_fmt(run['srcc_gain'])}; last "
            f"{_fmt(last['srcc'])}, best {_fmt(best['srcc'])} at step {best['step']}), PLCC {_fmt(first['plcc'])} -> "
            f"{_fmt(last['plcc'])} | greedy SRCC {_fmt(first['greedy_srcc'])} -> {_fmt(last['greedy_srcc'])} | "
            f"reward {_fmt(pts[1].get('reward') if len(pts) > 1 else None)} -> {_fmt(last.get('reward'))}")
        if run.get("final_eval"):
            fe = run["final_eval"]
            lines.append(f"{'':>8}  vqrl eval of final model: " + ", ".join(
                f"{mode} srcc {_fmt(m['srcc'])} plcc {_fmt(m['plcc'])}" for mode, m in fe.items()))
    lines.append(f"total {results['seconds']}s")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    import torch
    from transformers import set_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible")
    started = time.perf_counter()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    set_seed(args.seed)

    data = make_data(args, out)
    print(f"data: {data['n_train']} train records ({', '.join(data['train_photos'])}), {data['n_heldout']} held-out "
          f"({', '.join(data['heldout_photos'])})", flush=True)
    model_path = make_model(args, out)
    n_params = sum(p.numel() for p in load(model_path, argparse.Namespace(device="cpu"))[0].parameters())
    print(f"model: random tiny Qwen2.5-VL, hidden {args.hidden_size}, {args.layers} layers, {n_params:,} parameters",
          flush=True)

    if args.warm_start:
        sft_path = out / "sft"
        shutil.copytree(args.warm_start, sft_path)
        sft_info = {"steps": 0, "seconds": 0.0, "loss_first": math.nan, "loss_last": math.nan,
                    "warm_start": args.warm_start}
    else:
        sft_path, sft_info = warmup(args, model_path, data, out)
    print(f"warm-up: {args.sft_steps} SFT steps, loss {sft_info['loss_first']:.3f} -> {sft_info['loss_last']:.3f}, "
          f"{sft_info['seconds']}s", flush=True)

    def evaluator_factory(processor):
        heldout = HeldoutEval(args, data, processor)
        if not args.eval_train:
            return heldout
        train = HeldoutEval(args, {**data, "heldout": data["train"]}, processor)
        step = max(1, len(train.records) // args.eval_train)
        train.records = train.records[::step][:args.eval_train]

        def both(model):
            ev = heldout(model)
            ev.update({f"train_{mode}": m for mode, m in train(model).items()})
            return ev
        return both

    title = (f"learning check ({args.preset} preset, {args.device}): tiny Qwen2.5-VL h{args.hidden_size}x{args.layers}"
             f" from scratch, {data['n_train']} train / {data['n_heldout']} held-out, lr {args.lr}, "
             f"G={args.num_generations}, {args.prompts_per_step} prompts/step")
    results = {"title": title, "config": {k: v for k, v in vars(args).items()}, "data": data,
               "model": {"parameters": n_params, "path": str(model_path)}, "warmup": sft_info, "runs": {}}
    if not args.trainers:  # a probe of the warm-up alone (e.g. --sft_targets mos: what supervision can reach)
        model, processor = load(sft_path, args)
        for name, d in (("heldout", data), ("train", {**data, "heldout": data["train"]})):
            sft_info[f"eval_{name}"] = HeldoutEval(args, d, processor)(model)["expected"]
            print(f"warm-up model on {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in
                                                          sft_info[f"eval_{name}"].items()), flush=True)
        del model
    for name in args.trainers:
        steps = args.steps if name == "standard" else args.refine_steps
        set_seed(args.seed)
        run = run_grpo(args, name, steps, sft_path, data, evaluator_factory, out)
        if not args.no_final_eval:
            run["final_eval"] = final_eval(args, run, data)
        results["runs"][name] = run
        results["seconds"] = round(time.perf_counter() - started, 1)
        (out / "results.json").write_text(json.dumps(results, indent=1))  # after each run: a killed check keeps it
        plot(results, out / "curves.png")
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "curves.png")
    print("\n" + summarize(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'curves.png'}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
