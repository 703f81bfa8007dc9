"""Tiny randomly initialised Qwen2-VL / Qwen2.5-VL / Qwen3-VL models with a locally trained tokenizer.

They exist so that tests, the demo and CPU experiments run the real code paths without any download; they must
never be mistaken for a real checkpoint (the config carries `vqrl_tiny: true`).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Qwen's special tokens, in Qwen's order, so ids look familiar and the processors find what they expect.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# A Qwen-style chat template written for vqrl: string or typed-part content; image/video parts become
# `<|vision_start|><|image_pad|><|vision_end|>`; a default system turn like Qwen2-VL's.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = (
    "the image video photo picture frame quality score rate overall visual perceptual sharp sharpness blur blurry "
    "blurred noise noisy grain compression jpeg artifact artifacts block blocking ringing color colour saturation "
    "contrast brightness bright dark exposure overexposed underexposed detail details texture edge edges clear "
    "clarity smooth natural distortion distorted distortions severity slight mild moderate severe extreme region "
    "object background foreground focus motion shake pixel pixelation quantization banding level high low good "
    "poor bad excellent fair average very quite slightly is are has have with and or but of in on at a an this "
    "that it which what how where please answer think first then give between from to 1 5 one five reasoning "
    "because so visible strong weak light shadow sky face person cat cup rocket grass star people building "
    "gaussian impulse salt pepper pristine reference compare top bottom left right center option options "
    "choose select box coordinates width height mean opinion assessment assess evaluate judge"
).split()


def _corpus(seed: int = 0, lines: int = 6000) -> list[str]:
    """Deterministic text in the domain's words, tags and numbers: enough for a small BPE vocabulary."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 18)))
        score = f"{rng.uniform(1, 5):.2f}"
        kind = rng.random()
        if kind < 0.4:
            out.append(f"<think>{words}.</think><answer>Score: {score}</answer>")
        elif kind < 0.6:
            out.append(f"<answer>Score: {score}</answer> {words.capitalize()}?")
        elif kind < 0.8:
            out.append(f"{words.capitalize()}, [{rng.randint(0, 999)}, {rng.randint(0, 999)}] ({chr(65 + rng.randint(0, 3))})")
        else:
            out.append(f'{{"distortion": "{rng.choice(_WORDS)}", "severity": {rng.randint(1, 5)}}} {words}')
    return out


def train_tokenizer(vocab_size: int = 1024, seed: int = 0):
    """A byte-level BPE with Qwen's special tokens and one token per digit (the Refine reward reads digits)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _sizes(arch: str, head_dim: int, hidden: int | None):
    """Text sizes: `hidden // head_dim` heads (default 64 wide, at least 2 heads); mrope sections scaled to head_dim/2."""
    heads = hidden // head_dim if hidden else max(2, 64 // head_dim)
    half = head_dim // 2
    first = half * (24 if arch == "qwen3_vl" else 16) // 64  # Qwen3-VL's [24, 20, 20]; Qwen2/2.5-VL's [16, 24, 24]
    second = (half - first) // 2
    return heads * head_dim, heads, [first, second, half - first - second]


def build_config(arch: str, tokenizer, head_dim: int = 16, hidden_size: int | None = None, layers: int = 2,
                 vision_hidden_size: int = 32, vision_depth: int = 2):
    """A tiny config of `arch` whose special-token ids match `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    hidden, heads, section = _sizes(arch, head_dim, hidden_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        rope_scaling={"type": "mrope", "mrope_section": section},
        rope_theta=10000.0,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if arch == "qwen2_vl":
        vision = dict(depth=vision_depth, embed_dim=vision_hidden_size, hidden_size=hidden, num_heads=2, mlp_ratio=2,
                      patch_size=14)
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    elif arch == "qwen2_5_vl":
        vision = dict(
            depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_heads=2,
            out_hidden_size=hidden, patch_size=14, fullatt_block_indexes=list(range(1, vision_depth, 2)),
            window_size=56,
        )
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    else:
        text["head_dim"] = head_dim
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": section, "mrope_interleaved": True}
        vision = dict(
            depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_heads=2,
            out_hidden_size=hidden, patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0],
        )
        cfg = Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    cfg.vqrl_tiny = True
    return cfg


def build_processor(arch: str, tokenizer, min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 64):
    """The arch's real processor class around our tokenizer; small pixel budgets keep CPU runs fast."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    if arch == "qwen3_vl":
        factor = 32
        size = {"shortest_edge": max(min_pixels, factor * factor), "longest_edge": max_pixels * factor**2 // 28**2}
        image = Qwen2VLImageProcessor(size=size, patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        video = Qwen3VLVideoProcessor(size=size, patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                      do_sample_frames=False, cap_pixels_per_frame=True)
        return Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                chat_template=CHAT_TEMPLATE)
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image = Qwen2VLImageProcessor(size=size, patch_size=14)
    video = Qwen2VLVideoProcessor(size=size, patch_size=14, cap_pixels_per_frame=True)
    cls = Qwen2VLProcessor if arch == "qwen2_vl" else Qwen2_5_VLProcessor
    return cls(image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=CHAT_TEMPLATE)


def make_tiny_model(arch: str, out: str | Path, head_dim: int = 16, hidden_size: int | None = None,
                    layers: int = 2, seed: int = 0, vocab_size: int = 1024, vision_hidden_size: int = 32,
                    vision_depth: int = 2) -> Path:
    """Write a tiny random model + processor to `out` (safetensors); same seed, same bytes."""
    from transformers import AutoModelForImageTextToText, GenerationConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size=vocab_size, seed=0)
    config = build_config(arch, tokenizer, head_dim=head_dim, hidden_size=hidden_size, layers=layers,
                          vision_hidden_size=vision_hidden_size, vision_depth=vision_depth)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    build_processor(arch, tokenizer).save_pretrained(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ARCHS, default="qwen2_5_vl")
    parser.add_argument("--out", required=True, help="directory to write the model and processor into")
    parser.add_argument("--head_dim", type=int, default=16, help="attention head size (vLLM's CPU backend needs >= 64)")
    parser.add_argument("--hidden_size", type=int, default=None, help="text hidden size (default: heads x head_dim)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vision_hidden_size", type=int, default=32)
    parser.add_argument("--vision_depth", type=int, default=2)
    parser.add_argument("--vocab_size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    out = make_tiny_model(args.arch, args.out, head_dim=args.head_dim, hidden_size=args.hidden_size,
                          layers=args.layers, seed=args.seed, vocab_size=args.vocab_size,
                          vision_hidden_size=args.vision_hidden_size, vision_depth=args.vision_depth)
    n = sum(p.numel() for p in __import__("safetensors.torch").torch.load_file(str(out / "model.safetensors")).values())
    print(f"wrote tiny {args.arch} ({n:,} parameters) to {out}")
    return 0
