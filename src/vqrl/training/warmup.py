"""Format warm-up: a short supervised pass (TRL's SFTTrainer) that teaches a model vqrl's answer format with scores
drawn at random, so that GRPO's rewards differ within a group from the first step. A random model never writes
`<answer>`: every reward is 0, every advantage is 0, and GRPO changes no weight.

It teaches the format only, never quality: each target's score is uniform on [1, 5] whatever the image, and the
images are synthetic. The embedded tiny model (`vqrl train` with no model) is built with it.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

from ..data.prompts import SCORE_PREFIX, PromptConfig, build_messages, format_score

THINK_TEXT = "I look at the image."
# The question the seed's records carry, and vqrl's default one (records without a question): the warm-up shows both.
SEED_QUESTION = ("What is your overall rating on the quality of this picture? The rating should be a float between 1 "
                 "and 5, rounded to two decimal places, with 1 representing very poor quality and 5 representing "
                 "excellent quality.")


def target(score: float, think: bool = True) -> str:
    answer = f"{SCORE_PREFIX}{format_score(score)}</answer>"
    return f"<think>{THINK_TEXT}</think>{answer}" if think else answer


def synthetic_image(rng: random.Random, side: int = 112):
    """A smooth colour gradient with noise: something to look at, with no quality to learn from."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side] / side
    channels = [rng.random() * x + rng.random() * y + rng.random() * 0.5 for _ in range(3)]
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 0.1, (side, side, 3))
    pixels = np.stack(channels, -1) / 2.0 + noise
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype("uint8"))


class FormatExamples:
    """Prompt-completion rows for TRL's vision collator, built on access and reproducible from the seed: a scoring
    prompt (vqrl's own prompt code) about a synthetic image, and a format-correct answer with a random score."""

    def __init__(self, length: int, seed: int = 0, think: bool = True):
        self.length, self.seed, self.prompt_cfg = length, seed, PromptConfig(think=think)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + index)
        record = {"type": "scoring_image"}
        if rng.random() < 0.5:
            record["question"] = SEED_QUESTION
        image = synthetic_image(rng)
        messages = build_messages(record, [{"type": "image"}], self.prompt_cfg)  # TRL's collator: placeholders
        completion = [{"role": "assistant",
                       "content": [{"type": "text", "text": target(rng.uniform(1.0, 5.0), self.prompt_cfg.think)}]}]
        return {"prompt": messages, "completion": completion, "images": [image]}

    def as_dataset(self):
        """A `datasets.Dataset` of indices whose rows are built on access (TRL skips preparing vision datasets)."""
        from ..data.dataset import lazy_dataset

        return lazy_dataset(self.length, self.__getitem__)


def format_warmup(model_dir: str | Path, out: str | Path, steps: int = 120, batch: int = 8, lr: float = 4e-3,
                  seed: int = 0, think: bool = True, max_pixels: int = 12544) -> Path:
    """Fine-tune the language model of `model_dir` (vision tower frozen) on `steps` x `batch` format examples and
    save the result, with its processor, to `out`."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from .progress import CompactProgress

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(str(model_dir))
    processor.image_processor.size["longest_edge"] = max_pixels
    model.model.visual.requires_grad_(False)
    config = SFTConfig(
        output_dir=str(Path(out).parent / f".{Path(out).name}-sft"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), weight_decay=0.0,
        logging_steps=5, save_strategy="no", report_to="none", seed=seed, use_cpu=True, bf16=False,
        completion_only_loss=True, remove_unused_columns=False, gradient_checkpointing=False, max_length=None,
        dataloader_num_workers=0,
    )
    examples = FormatExamples(steps * batch, seed, think).as_dataset()
    trainer = SFTTrainer(model=model, args=config, train_dataset=examples, processing_class=processor)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgress("format warm-up"))
    trainer.train()
    model.save_pretrained(str(out), safe_serialization=True)
    AutoProcessor.from_pretrained(str(model_dir)).save_pretrained(str(out))  # the processor as it came
    return Path(out)


def build_embedded(path: str | Path) -> Path:
    """The embedded default model: a tiny random Qwen2.5-VL, then the format warm-up; staged and published in one
    rename (marked complete), so a crash leaves no half model where `vqrl train` would look."""
    from ..models.tiny import make_tiny_model
    from . import checkpoints

    path = Path(path)
    staging = path.parent / f".staging-{path.name}"
    checkpoints.clear_dir(str(staging))
    random_init = make_tiny_model("qwen2_5_vl", staging / "random")
    format_warmup(random_init, staging / "model")
    checkpoints.publish(str(staging / "model"), str(path), 0)
    checkpoints.clear_dir(str(staging))
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m vqrl.training.warmup OUT`: build the embedded model into OUT (vqrl.grpo runs this once)."""
    logging.basicConfig(level=logging.INFO, format="[vqrl] %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m vqrl.training.warmup OUT", file=sys.stderr)
        return 2
    build_embedded(os.path.abspath(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
