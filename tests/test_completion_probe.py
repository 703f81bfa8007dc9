"""The learning check's completion probe (vqrl.learning.stability.completion_shapes): what a format break changed in
the warm-up's template, read from the sampled completions of one step."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vqrl.learning.stability import completion_shapes
from vqrl.training.warmup import THINK_TEXT

GOOD = f"<think>{THINK_TEXT}</think><answer>Score: 3.27</answer><|im_end|>"


def test_a_step_of_template_completions_is_all_template_and_closed():
    row = completion_shapes([GOOD] * 8)
    assert row == {"n": 8, "think_template": 1.0, "think_closed": 1.0, "answer_closed": 1.0, "distinct_thoughts": 1,
                   "top_other_thoughts": [], "unclosed_examples": []}


def test_a_thought_that_never_closes_is_named_with_what_was_written():
    loop = "<think>I look at the image. I look at the image. I look at"
    long_answer = f"<think>{THINK_TEXT}</think><answer>Score: 3.2777777777"
    other = "<think>I look.</think><answer>Score: 2.00</answer>"
    row = completion_shapes([GOOD, loop, loop, long_answer, other])
    assert row["think_template"] == 2 / 5 and row["think_closed"] == 3 / 5 and row["answer_closed"] == 2 / 5
    assert row["top_other_thoughts"] == [("[unclosed] I look at the image. I look at the image. I look at", 2),
                                         ("I look.", 1)]
    assert row["unclosed_examples"] == [loop, loop]  # as sampled, the first ones
    assert row["distinct_thoughts"] == 3


SHAPES = [GOOD, "<think>x</think><answer>Score: 1.00</answer>", "<think>I look", "", "</think>"]


@given(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=30))
def test_shares_are_fractions_and_examples_are_unclosed_completions(texts):
    row = completion_shapes(texts, examples=3)
    for key in ("think_template", "think_closed", "answer_closed"):
        assert 0.0 <= row[key] <= 1.0
    assert row["think_template"] == sum(t == GOOD for t in texts) / len(texts)
    assert all("</answer>" not in t for t in row["unclosed_examples"])
    assert len(row["unclosed_examples"]) == min(3, sum("</answer>" not in t for t in texts))
    assert sum(c for _, c in row["top_other_thoughts"]) <= len(texts)
