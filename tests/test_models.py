"""Tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL models: saved, reloaded with the stock Auto classes (no remote code),
run forward and generate on an image and a video, deterministic by seed, with a digit-per-token tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqrl.data.media import VisionSpec, load_image, load_video
from vqrl.models.tiny import ARCHS, CHAT_TEMPLATE, SPECIAL_TOKENS, build_config, make_tiny_model, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
VIDEO = os.path.join(EXAMPLES, "videos", "rocket_pan_l0.mp4")
IMAGE = os.path.join(EXAMPLES, "images", "camera.jpg")

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each arch built once with seed 0 (read-only for the tests)."""
    cache = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = make_tiny_model(arch, tmp_path_factory.mktemp(arch) / "model", seed=0)
        return cache[arch]

    return get


@pytest.fixture(scope="module")
def loaded(built):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cache = {}

    def get(arch: str):
        if arch not in cache:
            path = built(arch)
            cache[arch] = (AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path))
        return cache[arch]

    return get


def image_video_batch(arch, processor):
    """Two prompts: one with an image, one with a video, built with the processor's own chat template."""
    spec = VisionSpec.for_processor(processor)
    image = load_image(IMAGE, spec)
    frames, meta = load_video(VIDEO, spec)
    convs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rate this image."}]}],
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Rate this video."}]}],
    ]
    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    kwargs = {}
    if arch == "qwen3_vl":
        kwargs["video_metadata"] = [{k: meta[k] for k in ("fps", "total_num_frames", "frames_indices")}]
    inputs = processor(text=texts, images=[image], videos=[frames], padding=True, return_tensors="pt", **kwargs)
    return inputs, frames


def safetensors_bytes(path) -> bytes:
    return (Path(path) / "model.safetensors").read_bytes()


@pytest.mark.parametrize("arch", ARCHS)
def test_reload_forward_and_generate_with_image_and_video(arch, built, loaded):
    model, processor = loaded(arch)
    assert type(model).__name__ == MODEL_CLASSES[arch]
    assert model.config.model_type == arch and getattr(model.config, "vqrl_tiny", False) is True
    assert processor.chat_template == CHAT_TEMPLATE
    vocab = model.config.text_config.vocab_size
    assert vocab == len(processor.tokenizer)

    inputs, frames = image_video_batch(arch, processor)
    image_id = model.config.image_token_id
    video_id = model.config.video_token_id
    ids = inputs["input_ids"]
    assert (ids[0] == image_id).sum() > 0 and (ids[0] == video_id).sum() == 0
    assert (ids[1] == video_id).sum() > 0 and (ids[1] == image_id).sum() == 0
    # our frames reach the model as they are: no frame dropped or resampled by the processor
    assert inputs["video_grid_thw"][0, 0].item() * 2 == frames.shape[0]

    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (2, ids.shape[1], vocab)
    assert torch.isfinite(out.logits).all()
    # the two rows see different media, so their last-position logits differ
    assert not torch.allclose(out.logits[0, -1], out.logits[1, -1])

    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert gen.shape == (2, ids.shape[1] + 3)
    assert torch.equal(gen[:, : ids.shape[1]], ids)
    assert ((gen[:, ids.shape[1]:] >= 0) & (gen[:, ids.shape[1]:] < vocab)).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_bytes_other_seed_other_weights(arch, built, tmp_path):
    first = built(arch)
    again = make_tiny_model(arch, tmp_path / "again", seed=0)
    for name in sorted(os.listdir(first)):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    other = make_tiny_model(arch, tmp_path / "other", seed=1)
    assert safetensors_bytes(other) != safetensors_bytes(first)
    assert (other / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()


def test_tokenizer_splits_digits_and_has_qwen_special_tokens(built, loaded):
    _, processor = loaded("qwen2_5_vl")
    tok = processor.tokenizer
    pieces = tok.convert_ids_to_tokens(tok("Score: 3.62")["input_ids"])
    assert pieces[-4:] == ["3", ".", "6", "2"]
    assert tok.decode(tok("Score: 3.62")["input_ids"]) == "Score: 3.62"
    for number in ("4.40", "1234567890", "x9y8"):
        digits = [p for p in tok.convert_ids_to_tokens(tok(number)["input_ids"]) if any(c.isdigit() for c in p)]
        assert digits == [c for c in number if c.isdigit()], number
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert None not in ids.values() and len(set(ids.values())) == len(SPECIAL_TOKENS)
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    for token in SPECIAL_TOKENS:
        assert tok(token, add_special_tokens=False)["input_ids"] == [ids[token]], token  # never split
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", ARCHS)
def test_head_dim_64(arch, tmp_path):
    from transformers import AutoModelForImageTextToText

    path = make_tiny_model(arch, tmp_path / "m", head_dim=64)
    model = AutoModelForImageTextToText.from_pretrained(path)
    text = model.config.text_config
    assert text.hidden_size == 128 and text.num_attention_heads == 2
    assert (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads) == 64
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert q_proj.out_features == 2 * 64
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 20, 30, 40]])).logits
    assert logits.shape == (1, 4, text.vocab_size) and torch.isfinite(logits).all()


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        build_config("llava", train_tokenizer())


def test_tiny_model_cli(built, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "vqrl.cli", "tiny-model", "--arch", "qwen2_vl", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote tiny qwen2_vl" in proc.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (out / name).is_file(), name
    # another process, same default seed: the same bytes as the in-process build
    assert safetensors_bytes(out) == safetensors_bytes(built("qwen2_vl"))
    assert (out / "tokenizer.json").read_bytes() == (built("qwen2_vl") / "tokenizer.json").read_bytes()


def test_tiny_vision_tower_size(tmp_path):
    from transformers import AutoModelForImageTextToText

    path = make_tiny_model("qwen2_5_vl", tmp_path / "m", vision_hidden_size=64, vision_depth=3)
    visual = AutoModelForImageTextToText.from_pretrained(path).model.visual
    assert len(visual.blocks) == 3 and visual.blocks[0].norm1.weight.shape[0] == 64
    assert visual.fullatt_block_indexes == [1]


def test_random_model_names_the_known_shapes():
    from vqrl.models.shapes import shape_path

    assert shape_path("qwen2_5_vl_7b").name == "qwen2_5_vl_7b.json"
    with pytest.raises(FileNotFoundError, match="known: .*qwen2_5_vl_7b"):
        shape_path("qwen2_5_vl_70b")


@pytest.mark.parametrize("arch", ARCHS)
def test_build_config_defaults_are_the_saved_tiny_model(arch, built):
    """build_config(arch, tokenizer) alone gives the config make_tiny_model writes with its defaults."""
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(built(arch)).to_dict()
    fresh = build_config(arch, train_tokenizer()).to_dict()
    def sizes(d: dict) -> dict:  # everything but what saving adds (dtype, architectures, version)
        drop = {"dtype", "torch_dtype", "architectures", "transformers_version", "_name_or_path"}
        return {k: sizes(v) if isinstance(v, dict) else v for k, v in d.items() if k not in drop}

    assert fresh["text_config"]["num_hidden_layers"] == 2 and fresh["vision_config"]["depth"] == 2
    assert sizes(fresh) == sizes(saved)


# The tiny models are what the whole suite and the demo run on, and recorded results (docs/learning.md) used them:
# their shapes, processors and vocabulary are pinned so that a change to them is a deliberate one.
TEXT = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
        "intermediate_size": 128, "vocab_size": 1024, "tie_word_embeddings": False}
PINNED = {
    "qwen2_vl": ({"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14},
                 [2, 3, 3], (3136, 50176, 14)),
    "qwen2_5_vl": ({"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                    "patch_size": 14, "fullatt_block_indexes": [1], "window_size": 56}, [2, 3, 3], (3136, 50176, 14)),
    "qwen3_vl": ({"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                  "patch_size": 16, "deepstack_visual_indexes": [0]}, [3, 2, 3], (3136, 65536, 16)),
}
VOCABULARY_SHA256 = "3ad6316ebd9cedbd"  # of the sorted (token, id) pairs


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_models_are_pinned(arch, built, loaded):
    import hashlib
    import json

    model, processor = loaded(arch)
    config, (vision, mrope, (min_pixels, max_pixels, patch)) = model.config, PINNED[arch]
    assert config.tie_word_embeddings is False
    assert {k: getattr(config.text_config, k) for k in TEXT} == TEXT
    rope = config.text_config.rope_scaling or config.text_config.rope_parameters
    assert rope["mrope_section"] == mrope and all(type(x) is int for x in rope["mrope_section"])
    assert {k: getattr(config.vision_config, k) for k in vision} == vision
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    for proc in (processor.image_processor, processor.video_processor):
        assert (proc.size.shortest_edge, proc.size.longest_edge, proc.patch_size) == (min_pixels, max_pixels, patch)
        assert type(proc.size.longest_edge) is int
    assert processor.video_processor.cap_pixels_per_frame is True  # each frame within the budget, as in training
    vocab = json.dumps(sorted(processor.tokenizer.get_vocab().items())).encode()
    assert hashlib.sha256(vocab).hexdigest()[:16] == VOCABULARY_SHA256


def test_tiny_model_into_a_new_nested_folder_and_again_over_it(built, tmp_path):
    out = tmp_path / "a" / "b" / "model"
    make_tiny_model("qwen2_vl", out)
    first = safetensors_bytes(out)
    make_tiny_model("qwen2_vl", out)  # rebuilding over an existing model is allowed and gives the same bytes
    assert safetensors_bytes(out) == first == safetensors_bytes(built("qwen2_vl"))


def test_sizes_with_an_explicit_hidden_size_are_whole_numbers():
    from vqrl.models.tiny import _sizes

    for arch, head_dim, hidden, expected in (("qwen2_vl", 64, 256, (256, 4, [8, 12, 12])),
                                             ("qwen3_vl", 64, 128, (128, 2, [12, 10, 10])),
                                             ("qwen2_5_vl", 16, None, (64, 4, [2, 3, 3]))):
        got = _sizes(arch, head_dim, hidden)
        assert got == expected and all(type(x) is int for x in (got[0], got[1], *got[2])), (arch, got)


def test_processor_never_allows_less_than_one_merged_token():
    """A pixel floor below one merged token (28x28, Qwen3-VL 32x32) is raised to it."""
    from vqrl.models.tiny import build_processor

    tok = train_tokenizer()
    assert build_processor("qwen3_vl", tok, min_pixels=100).image_processor.size.shortest_edge == 32 * 32
    assert build_processor("qwen3_vl", tok, min_pixels=4096).image_processor.size.shortest_edge == 4096
