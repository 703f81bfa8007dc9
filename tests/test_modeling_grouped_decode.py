"""Grouped-query decoding without expanding the KV cache (modeling/grouped_decode.py): the same attention as
transformers' SDPA path for one query position with padding masks, the same greedy generation (dynamic and static
caches), training forwards untouched, decode steps really taking the grouped path, and no trace in a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from vqrl.modeling import grouped_decode


class _Layer(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
@pytest.mark.parametrize("seed", range(4))
def test_one_position_matches_transformers_sdpa(mask_kind, seed):
    g = torch.Generator().manual_seed(seed)
    batch, kv_heads, groups, length, dim = 3, 2, 4, 9 + seed, 8
    q = torch.randn(batch, kv_heads * groups, 1, dim, generator=g)
    k, v = (torch.randn(batch, kv_heads, length, dim, generator=g) for _ in range(2))
    keep = torch.rand(batch, 1, 1, length, generator=g) > 0.3
    keep[..., -1] = True  # the current position is always attended
    mask = {"bool": keep, "float": torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min),
            "none": None}[mask_kind]
    layer = _Layer(groups)
    ours, _ = grouped_decode.grouped_decode_attention(layer, q, k, v, mask, scaling=dim ** -0.5)
    theirs, _ = sdpa_attention_forward(layer, q, k, v, mask, scaling=dim ** -0.5)
    assert ours.shape == theirs.shape == (batch, 1, kv_heads * groups, dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    if mask_kind == "bool":  # a masked key changes nothing: the mask is really applied per row
        k2 = k + 100.0 * (~keep[:, 0, 0]).float()[:, None, :, None]  # only the masked keys move
        again, _ = grouped_decode.grouped_decode_attention(layer, q, k2, v, mask, scaling=dim ** -0.5)
        torch.testing.assert_close(again, ours)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from vqrl.models.tiny import make_tiny_model

    path = make_tiny_model("qwen2_5_vl", tmp_path_factory.mktemp("gd"))
    plain = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa").eval()
    grouped = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa").eval()
    assert grouped_decode.install(grouped)
    return plain, grouped


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_same_greedy_generation_and_decode_steps_take_the_grouped_path(pair, cache, monkeypatch):
    plain, grouped = pair
    ids = torch.randint(5, 900, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, :2] = 0
    grouped_calls = {"n": 0}
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(query, key, *args, **kwargs):
        grouped_calls["n"] += int(query.shape[1] == key.shape[1] and query.shape[2] > 1 and key.shape[2] > 1
                                  and query.shape[2] < key.shape[2] and query.shape[2] == 2)
        return sdpa(query, key, *args, **kwargs)

    kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    if cache == "static":
        kw["cache_implementation"] = "static"
    expected = plain.generate(input_ids=ids, attention_mask=mask, **kw)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    got = grouped.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(expected.scores), rtol=1e-5, atol=1e-5)
    layers = grouped.config.text_config.num_hidden_layers
    assert grouped.config.text_config.num_attention_heads // grouped.config.text_config.num_key_value_heads == 2
    assert grouped_calls["n"] == layers * 15  # every decode step after the prefill, every layer: 2 heads per group


def test_training_forward_is_untouched_and_nothing_is_saved(pair, tmp_path):
    plain, grouped = pair
    ids = torch.randint(5, 900, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids, attention_mask=mask).logits,
                           grouped(input_ids=ids, attention_mask=mask).logits)
    grouped.save_pretrained(tmp_path / "saved")
    assert grouped_decode.NAME not in (tmp_path / "saved" / "config.json").read_text()
    json.loads((tmp_path / "saved" / "config.json").read_text())


def test_only_sdpa_language_models(tmp_path):
    from vqrl.models.tiny import make_tiny_model

    path = make_tiny_model("qwen2_vl", tmp_path / "m")
    eager = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager")
    assert not grouped_decode.install(eager)
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa")
    assert grouped_decode.install(model)
    assert grouped_decode.install(model)  # twice is harmless
    assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower is left alone


def test_install_stops_when_transformers_attention_no_longer_matches(tmp_path, monkeypatch):
    """A change in transformers' SDPA attention (here: its output doubled) is caught at install, not trained on."""
    import transformers.integrations.sdpa_attention as sdpa
    from vqrl.models.tiny import make_tiny_model

    path = make_tiny_model("qwen2_5_vl", tmp_path / "m")
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa")
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: (2 * real(*a, **k)[0], None))
    with pytest.raises(RuntimeError, match="differs from transformers' SDPA attention"):
        grouped_decode.install(model)
    assert model.config.text_config._attn_implementation == "sdpa"  # nothing was switched
