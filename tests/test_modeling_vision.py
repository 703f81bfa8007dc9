"""modeling/vision.py: where a completion that sampled a vision special token ends, and what the log-prob forward reads
there."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqrl.modeling.vision import blank_scored_vision_tokens, vision_token_end

VISION = [9, 12]
PAD = 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 15), min_size=6, max_size=6), min_size=1, max_size=4),
       st.integers(1, 5), st.data())
def test_only_scored_vision_tokens_are_blanked(rows, keep, data):
    """A vision token at a scored position (a completion's) reads as the pad token; every other token, the prompt's
    vision tokens included, is read as it is; the input is not changed in place."""
    ids = torch.tensor(rows)
    labels = ids.clone()
    labels[:, :-keep] = -100  # TRL's rule: only the last logits_to_keep columns are scored
    unmasked = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=6, max_size=6),
                                               min_size=len(rows), max_size=len(rows))))
    labels[~unmasked] = -100  # padding is not scored either
    before = ids.clone()
    read = blank_scored_vision_tokens(ids, labels, VISION, PAD)
    assert torch.equal(ids, before)
    for r in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            scored_vision = labels[r, c] != -100 and int(ids[r, c]) in VISION
            assert int(read[r, c]) == (PAD if scored_vision else int(ids[r, c]))


@given(st.lists(st.integers(0, 15), max_size=12))
def test_a_completion_ends_just_after_its_first_vision_token(tokens):
    end = vision_token_end(tokens, set(VISION))
    if end is None:
        assert not set(tokens) & set(VISION)
    else:
        assert tokens[end - 1] in VISION and not set(tokens[:end - 1]) & set(VISION)
