"""`learning_check --vision_init`: the check's model starts from a saved tower and merger, its merger's output layer
still at zero (a blind warm-up), and a tower of another shape is refused by name, not half-loaded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vqrl.learning.warmup import copy_vision, make_model


def _visual(path):
    return AutoModelForImageTextToText.from_pretrained(path).model.visual.state_dict()


def test_the_tower_comes_from_the_donor_and_the_merger_output_stays_zero(tmp_path):
    donor = make_model(tmp_path / "donor", seed=1, max_pixels=56 * 56, zero_merger=False)
    before = _visual(make_model(tmp_path / "plain", seed=2, max_pixels=56 * 56))
    model = make_model(tmp_path / "model", seed=2, max_pixels=56 * 56, vision_from=donor)
    theirs, mine = _visual(donor), _visual(model)
    assert copy_vision(AutoModelForImageTextToText.from_pretrained(model), donor) == len(theirs)
    last = max(k.rsplit(".", 1)[0] for k in mine if k.startswith("merger.mlp."))  # the merger's output layer
    zeroed = {f"{last}.weight", f"{last}.bias"}
    assert all(not mine[k].abs().sum() for k in zeroed) and theirs[f"{last}.weight"].abs().sum() > 0
    for key in mine.keys() - zeroed:
        assert torch.equal(mine[key], theirs[key]), key
    assert any(not torch.equal(before[k], theirs[k]) for k in mine.keys() - zeroed), "the seeds' towers differ"


def test_a_tower_of_another_shape_is_refused(tmp_path):
    donor = make_model(tmp_path / "donor", seed=1, max_pixels=56 * 56, vision_hidden_size=64)
    with pytest.raises(ValueError, match="does not match"):
        make_model(tmp_path / "model", seed=2, max_pixels=56 * 56, vision_from=donor)
    model = AutoModelForImageTextToText.from_pretrained(make_model(tmp_path / "plain", seed=2, max_pixels=56 * 56))
    before = {k: v.clone() for k, v in model.model.visual.state_dict().items()}
    with pytest.raises(ValueError, match="does not match"):
        copy_vision(model, donor)
    assert all(torch.equal(v, before[k]) for k, v in model.model.visual.state_dict().items())
