"""vision-once's bookkeeping on constructed inputs (no model): which pixels are encoded, how features are expanded
back to every sequence's media, that the wrapper is removed after use, and the group-keeping shuffle's order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vqrl.modeling import vision_once

pytestmark = pytest.mark.usefixtures("own_torch_rng")  # these tests seed torch's global generator


def _image_sample(tag: float, grids: list[list[int]]):
    rows = sum(t * h * w for t, h, w in grids)
    return {"pixel_values": torch.full((rows, 1), tag), "image_grid_thw": torch.tensor(grids)}


def test_distinct_samples_are_found_by_identity_and_media_expanded_in_sequence_order():
    a = _image_sample(1.0, [[1, 1, 2], [1, 1, 1]])  # two images: 2 and 1 pixel rows
    b = _image_sample(2.0, [[1, 2, 2]])
    c = {}
    twin = _image_sample(1.0, [[1, 1, 2], [1, 1, 1]])  # equal to a, but another record: encoded on its own
    samples = [a, a, b, c, b, twin]
    uniq, inverse = vision_once.distinct(samples)
    assert uniq == [a, b, c, twin] and uniq[3] is twin and inverse == [0, 0, 1, 2, 1, 3]
    assert vision_once.expansion(uniq, inverse, "image_grid_thw") == [0, 1, 0, 1, 2, 2, 3, 4]
    assert vision_once.expansion(uniq, inverse, "video_grid_thw") == []

    extra, maps = vision_once.model_kwargs(samples, torch.device("cpu"))
    assert extra["pixel_values"][:, 0].tolist() == [1.0] * 3 + [2.0] * 4 + [1.0] * 3  # a, b, twin: once each
    assert extra["image_grid_thw"].tolist() == [[1, 1, 2], [1, 1, 1]] * 2 + [[1, 2, 2]] * 2 + [[1, 1, 2], [1, 1, 1]]
    assert set(maps) == {"get_image_features"}
    grid_key, grid, index = maps["get_image_features"]
    assert grid_key == "image_grid_thw" and grid.tolist() == [[1, 1, 2], [1, 1, 1], [1, 2, 2], [1, 1, 2], [1, 1, 1]]
    assert index == [0, 1, 0, 1, 2, 2, 3, 4]


def test_text_only_chunks_have_no_vision_kwargs():
    assert vision_once.model_kwargs([{}, {}], None) == ({}, {})


class _FakeBase:
    """Stands in for a Qwen-VL base model: one feature row per pixel row, pooled per image by its grid."""

    def __init__(self):
        self.calls = []

    def get_image_features(self, pixels, grid, return_dict=False, **kwargs):
        self.calls.append((pixels.clone(), grid.clone(), return_dict, kwargs))
        sizes = [int(g.prod()) for g in grid]
        pooled = tuple(torch.split(pixels, sizes))
        return SimpleNamespace(pooler_output=pooled, deepstack_features=[pixels * 10, pixels * 100])

    def get_video_features(self, pixels, grid, return_dict=False, **kwargs):
        return self.get_image_features(pixels, grid, return_dict=return_dict, **kwargs)  # nested: passes through


def test_encode_once_encodes_the_distinct_pixels_and_expands_features_to_every_sequence():
    base = _FakeBase()
    grid = torch.tensor([[1, 1, 2], [1, 1, 1]])
    pixels = torch.tensor([[1.0], [2.0], [3.0]])  # image 0: rows 1, 2; image 1: row 3
    with vision_once.encode_once(base, {"get_image_features": ("image_grid_thw", grid, [1, 0, 0])}):
        out = base.get_image_features(pixels, image_grid_thw=torch.tensor([[9, 9, 9]]), other=4)
    (sent, sent_grid, return_dict, kwargs), = base.calls
    assert torch.equal(sent, pixels) and torch.equal(sent_grid, grid) and return_dict is True and kwargs == {"other": 4}
    assert [p[:, 0].tolist() for p in out.pooler_output] == [[3.0], [1.0, 2.0], [1.0, 2.0]]
    assert [f[:, 0].tolist() for f in out.deepstack_features] == [[30.0, 10.0, 20.0, 10.0, 20.0],
                                                                   [300.0, 100.0, 200.0, 100.0, 200.0]]
    assert "get_image_features" not in base.__dict__  # the class's own method is back
    assert base.get_image_features(pixels, grid).pooler_output[0].shape == (2, 1)


def test_encode_once_passes_nested_calls_through_and_refuses_pixels_of_other_grids():
    base = _FakeBase()
    grid = torch.tensor([[1, 1, 2]])
    maps = {"get_video_features": ("video_grid_thw", grid, [0, 0]),
            "get_image_features": ("image_grid_thw", grid, [0, 0, 0])}
    with vision_once.encode_once(base, maps):
        out = base.get_video_features(torch.ones(2, 1), grid)
        assert len(out.pooler_output) == 2  # expanded once, by the video map only
        with pytest.raises(RuntimeError, match=r"^get_image_features: 3 pixel rows for grids of 2$"):
            base.get_image_features(torch.ones(3, 1), grid)
    assert base.__dict__.keys() == {"calls"}


def test_encode_once_is_undone_when_the_forward_fails():
    base = _FakeBase()
    with pytest.raises(KeyError):
        with vision_once.encode_once(base, {"get_image_features": ("image_grid_thw", torch.tensor([[1, 1, 1]]), [0])}):
            raise KeyError("forward failed")
    assert "get_image_features" not in base.__dict__


def test_expanding_without_deepstack_and_to_no_media():
    output = SimpleNamespace(pooler_output=(torch.ones(1, 2), torch.zeros(2, 2)))
    assert [p.shape[0] for p in vision_once._expand(output, [1, 1, 0]).pooler_output] == [2, 2, 1]
    empty = vision_once._expand(SimpleNamespace(pooler_output=(torch.ones(1, 2),),
                                                deepstack_features=[torch.ones(1, 2)]), [])
    assert empty.pooler_output == () and empty.deepstack_features[0].shape == (0, 2)


def test_shuffle_by_group_orders_groups_by_first_landing_with_trls_random_draw():
    a, b, c = {"pixel_values": torch.ones(1)}, {}, {"x": 1}
    vision = [a, a, b, b, b, c]
    torch.manual_seed(3)
    perm = torch.randperm(6).tolist()
    after_trl = torch.rand(1)
    torch.manual_seed(3)
    batch = {"vision": vision, "ids": torch.arange(6) * 10, "names": list("uvwxyz"), "scalar": torch.tensor(2.0),
             "none": None}
    out = vision_once.shuffle_by_group(batch)
    assert torch.equal(torch.rand(1), after_trl)  # the RNG stream after it is TRL's
    group = [0, 0, 1, 1, 1, 2]
    first = {g: min(perm.index(i) for i in range(6) if group[i] == g) for g in range(3)}
    order = sorted(range(6), key=lambda i: (first[group[i]], i))
    assert out["ids"].tolist() == [10 * i for i in order] and out["names"] == ["uvwxyz"[i] for i in order]
    assert [id(v) for v in out["vision"]] == [id(vision[i]) for i in order]
    assert out["scalar"].item() == 2.0 and out["none"] is None


def test_shuffle_without_vision_per_sequence_is_trls_permutation():
    torch.manual_seed(5)
    perm = torch.randperm(4).tolist()
    torch.manual_seed(5)
    out = vision_once.shuffle_by_group({"ids": torch.arange(4), "vision": None})
    assert out["ids"].tolist() == perm and out["vision"] is None
