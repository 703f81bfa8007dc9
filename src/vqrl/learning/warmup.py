"""The learning check's starting point: a random tiny Qwen2.5-VL whose merger starts at zero, and a supervised
warm-up (TRL's SFTTrainer) that teaches it only the answer format, with a uniformly random score as every target.

With the merger frozen at zero the warm-up model cannot see the image, so its held-out SRCC is 0 by construction; it
must never see a quality label (the `mos` targets exist only as a supervised reference probe).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from ..data.dataset import DataConfig, MediaLoader, RowBuilder, load_checked_records
from ..data.media import VisionSpec
from ..data.prompts import SCORE_PREFIX, PromptConfig, format_score
from ..grpo import freeze_vision
from ..training.warmup import THINK_TEXT  # the warm-up's fixed thought, one definition

TARGETS = ("random", "random_per_image", "mos", "perception")


def perception_thought(row: dict) -> str:
    """The thought a Stage-1 perception warm-up teaches: what is wrong with the image and how badly (the record's
    distortion and severity), so that Stage-2's PD has a thought that can make the true score more probable."""
    if not row.get("distortion"):
        return "Distortion: none."
    return f"Distortion: {str(row['distortion']).replace('_', ' ')}, level {row['severity']}."


def make_model(out: str | Path, *, seed: int, max_pixels: int, zero_merger: bool = True, hidden_size: int = 128,
               layers: int = 2, head_dim: int = 32, vision_hidden_size: int = 32, vision_depth: int = 2,
               vision_from: str | Path | None = None) -> Path:
    """`vqrl tiny-model` with one pixel budget saved in its processor (warm-up, GRPO and eval all read it);
    vision_from: the vision tower and merger of that saved model (copy_vision); with zero_merger, the merger's
    output layer at zero: image features enter the language model as zeros (the warm-up stays blind)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models.tiny import make_tiny_model

    path = make_tiny_model("qwen2_5_vl", out, head_dim=head_dim, hidden_size=hidden_size, layers=layers, seed=seed,
                           vision_hidden_size=vision_hidden_size, vision_depth=vision_depth)
    processor = AutoProcessor.from_pretrained(path)
    size = processor.image_processor.size
    size["longest_edge"] = max_pixels
    size["shortest_edge"] = min(size["shortest_edge"], max_pixels)
    processor.save_pretrained(path)
    if zero_merger or vision_from:
        model = AutoModelForImageTextToText.from_pretrained(path)
        if vision_from:
            copy_vision(model, vision_from)
        if zero_merger:
            last = [m for m in model.model.visual.merger.modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()
        model.save_pretrained(path)
    return Path(path)


def copy_vision(model, source: str | Path) -> int:
    """Load into `model` (in memory) the vision tower and merger of the saved model `source` (e.g. one trained by
    docs/learning/feature_probe.py --save: a stand-in for the pretrained encoder real models start from). Shapes
    must match, or nothing is loaded. Returns the number of tensors copied."""
    from transformers import AutoModelForImageTextToText

    donor = AutoModelForImageTextToText.from_pretrained(source, use_safetensors=True)
    mine, theirs = model.model.visual.state_dict(), donor.model.visual.state_dict()
    wrong = sorted(k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape)
    if wrong or len(mine) != len(theirs):
        raise ValueError(f"{source}: its vision tower does not match this model's ({len(wrong)} tensors differ, e.g. "
                         f"{wrong[:3]}): build it with the same --vision_hidden_size / --vision_depth / --hidden_size")
    model.model.visual.load_state_dict(theirs)
    return len(theirs)


def load(path: str | Path, device: str = "cpu"):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                        attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    return model.to(device), processor


def row_builder(data_file: str | Path, image_root: str | Path, processor, think: bool = True) -> RowBuilder:
    """The GRPO data path (records -> RowBuilder -> build_messages), so warm-up prompts equal GRPO prompts."""
    records = load_checked_records(DataConfig([str(data_file)], image_root=[str(image_root)]))
    return RowBuilder(records, MediaLoader(VisionSpec.for_processor(processor), None, None), PromptConfig(think=think))


def written_thought(text: str) -> str | None:
    """The thought a completion wrote between its first `<think>` and the first `</think>` after it (stripped);
    None when it did not write both."""
    start, end = text.find("<think>"), text.find("</think>")
    return text[start + len("<think>"):end].strip() if 0 <= start < end else None


def format_target(score: float, think: bool = True, thought: str = THINK_TEXT) -> str:
    answer = f"{SCORE_PREFIX}{format_score(score)}</answer>"
    return f"<think>{thought}</think>{answer}" if think else answer


class RandomScoreSFT:
    """Prompt-completion rows for TRL's vision collator: a record's GRPO prompt and a format-correct answer whose
    score is drawn uniformly from [1, 5] independently of the image (fresh for every index, reproducible). Targets
    "perception": the thought names the record's distortion and severity (Stage-1 perception, supervised), the score
    stays random, so the warm-up teaches what to see and nothing about what it is worth."""

    def __init__(self, builder: RowBuilder, length: int, seed: int, targets: str = "random"):
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, not {targets!r}")
        self.builder, self.length, self.seed, self.targets = builder, length, seed, targets

    def __len__(self):
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + index)
        row = self.builder.row(rng.randrange(len(self.builder.records)))
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
        thought = perception_thought(row) if self.targets == "perception" else THINK_TEXT
        if self.targets in ("random", "perception"):  # a fresh draw every time: the image says nothing about it
            score = rng.uniform(1.0, 5.0)
        elif self.targets == "random_per_image":  # one fixed draw per image: look at the image, learn no quality
            score = random.Random(f"{self.seed}:{row['image_path']}").uniform(1.0, 5.0)
        else:  # "mos": supervised, a reference probe only
            score = float(row["solution"])
        text = format_target(score, thought=thought)
        completion = [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
        return {"prompt": prompt, "completion": completion, "images": images}

    def as_dataset(self):
        """A `datasets.Dataset` of indices whose rows are built on access (TRL skips preparing vision datasets)."""
        from ..data.dataset import lazy_dataset

        return lazy_dataset(self.length, self.__getitem__)


def warmup(model_path: Path, train_file: Path, image_root: Path, out: Path, *, seed: int, steps: int, lr: float,
           batch: int, targets: str = "random", see_image: bool = False, train_tower: bool = False,
           device: str = "cpu", bf16: bool = False, callbacks=None) -> tuple[Path, dict]:
    """SFT from model_path into `<out>`; the vision tower stays frozen, and so does its merger unless see_image
    (train_tower: nothing frozen, for supervised reference probes; `callbacks`: TrainerCallbacks, e.g. evaluations)."""
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    model, processor = load(model_path, device)
    if not train_tower:
        freeze_vision(model, keep_merger=see_image)
    dataset = RandomScoreSFT(row_builder(train_file, image_root, processor), steps * batch, seed, targets)
    config = SFTConfig(
        output_dir=str(out) + "_run", max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=min(10, steps // 10), weight_decay=0.0,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", seed=seed, data_seed=seed,
        use_cpu=device == "cpu", bf16=bf16, completion_only_loss=True, remove_unused_columns=False,
        gradient_checkpointing=False, max_length=None, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset.as_dataset(), processing_class=processor,
                         callbacks=callbacks)
    result = trainer.train()
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    info = {"steps": steps, "seconds": round(time.perf_counter() - started, 1), "targets": targets,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "train_loss": result.training_loss}
    del trainer, model
    return Path(out), info
