"""Give a warm-up model's vision special tokens extra probability, to watch what GRPO does with completions that
sample one (docs/learning.md, "Vision tokens in completions"). Their lm_head rows become `scale` times the mean row
of the warm-up's template tokens; 1.6 makes ~5 % of the learning check's completions sample one at step 1.

    python docs/learning/vision_token_injection.py WARMUP_DIR OUT_DIR [--scale 1.6]
    python scripts/learning_check.py --quick --trainers standard --steps 40 --lr_schedule constant_with_warmup \\
        --eval_every 20 --no_final_eval --seeds 0 --warm_start OUT_DIR --out /tmp/inj
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from vqrl.learning.warmup import format_target
from vqrl.modeling.vision import vision_token_ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("warmup_dir")
    p.add_argument("out_dir")
    p.add_argument("--scale", type=float, default=1.6)
    a = p.parse_args()
    src, dst = Path(a.warmup_dir), Path(a.out_dir)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src)
    template = sorted(set(tokenizer(format_target(3.27), add_special_tokens=False)["input_ids"]))
    rows = model.get_output_embeddings().weight.data
    rows[vision_token_ids(tokenizer)] = a.scale * rows[template].mean(0)
    model.save_pretrained(dst, safe_serialization=True)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
