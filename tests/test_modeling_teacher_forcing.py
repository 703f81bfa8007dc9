"""Teacher forcing on a model whose probabilities are known in closed form: the hidden state is the one-hot input
token, so P(next = j | token i) = softmax(W[:, i] + b)[j]. Pins which position each target token is read at under
left padding, the per-sample split, the logits rows, and the batch's inputs (padding, dtype, modality ids)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vqrl.modeling.teacher_forcing import model_inputs, pad_left, teacher_forced_probs

VOCAB, PAD, IMG, VID = 12, 0, 10, 11

pytestmark = pytest.mark.usefixtures("own_torch_rng")  # these tests seed torch's global generator


class _Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, input_ids, attention_mask, use_cache, **kwargs):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache, **kwargs})
        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(input_ids, VOCAB).to(self.dtype))


class _Model(torch.nn.Module):
    base_model_prefix = "model"

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.model = _Backbone()
        self.model.dtype = dtype
        self.lm_head = torch.nn.Linear(VOCAB, VOCAB).to(dtype)
        self.config = SimpleNamespace(image_token_id=IMG, video_token_id=VID)

    def get_output_embeddings(self):
        return self.lm_head


def _expected(model, prefix, target):
    seq = prefix + target
    probs = []
    for k, token in enumerate(target):
        prev = seq[len(prefix) - 1 + k]
        logits = model.lm_head.weight[:, prev].double() + model.lm_head.bias.double()
        probs.append(logits.softmax(-1)[token].item())
    return probs


def test_pad_left_pads_on_the_left_and_masks_the_padding():
    ids, mask = pad_left([[5, 6, 7], [8], []], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_each_target_token_is_read_after_its_own_prefix_and_the_targets_before_it():
    model = _Model()
    prefixes, targets = [[1, 2, 3, 4], [5], [6, 7]], [[8, 9], [3, 1, 2], []]
    probs, rows = teacher_forced_probs(model, prefixes, targets, [{}, {}, {}], PAD, return_logits=True)
    for got, prefix, target in zip(probs, prefixes, targets):
        assert got.shape == (len(target),)
        assert torch.allclose(got.double(), torch.tensor(_expected(model, prefix, target), dtype=torch.float64),
                              atol=1e-6)
    assert [r.shape for r in rows] == [(2, VOCAB), (3, VOCAB), (0, VOCAB)]
    assert torch.allclose(rows[1][0], model.lm_head.weight[:, 5] + model.lm_head.bias)  # after the prefix's last token
    call, = model.model.calls
    assert call["use_cache"] is False and call["input_ids"].tolist() == [[1, 2, 3, 4, 8, 9], [0, 0, 5, 3, 1, 2],
                                                                        [0, 0, 0, 0, 6, 7]]
    assert call["attention_mask"].tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert probs[0].requires_grad is False and rows[0].requires_grad is False  # read without gradient


def test_without_return_logits_only_the_probabilities_come_back():
    model = _Model()
    probs = teacher_forced_probs(model, [[1]], [[2]], [{}], PAD)
    assert isinstance(probs, list) and len(probs) == 1
    assert torch.allclose(probs[0].double(), torch.tensor(_expected(model, [1], [2]), dtype=torch.float64), atol=1e-6)
    assert teacher_forced_probs(model, [[1], [2]], [[], []], [{}, {}], PAD)[1].numel() == 0


def test_model_inputs_carry_pixels_in_the_models_dtype_and_modality_ids():
    model = _Model(dtype=torch.float64)
    vision = [{"pixel_values": torch.ones(2, 3), "image_grid_thw": torch.tensor([[1, 1, 2]])},
              {"pixel_values_videos": torch.ones(1, 3), "video_grid_thw": torch.tensor([[1, 1, 1]])}]
    inputs = model_inputs(model, [[1, IMG, IMG], [VID, 2]], vision, PAD)
    assert inputs["input_ids"].tolist() == [[1, IMG, IMG], [PAD, VID, 2]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert inputs["pixel_values"].dtype == torch.float64 and inputs["pixel_values_videos"].dtype == torch.float64
    assert inputs["image_grid_thw"].dtype == torch.long  # grids stay integers
    assert inputs["mm_token_type_ids"].tolist() == [[0, 1, 1], [0, 2, 0]]
    assert set(model_inputs(model, [[1]], [{}], PAD)) == {"input_ids", "attention_mask"}
