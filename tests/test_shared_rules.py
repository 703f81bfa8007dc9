"""Rules that exist once: the number a record holds (validation, training rows and rewards read it alike) and the
thought a completion's score is read after (Refine's PD and `vqrl eval --mode expected` cut it alike)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from vqrl.data.records import check_record, to_float
from vqrl.rewards import build_reward_funcs
from vqrl.rewards.parsing import thought_of


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_are_themselves(x):
    assert to_float(x) == x


@given(st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False))
def test_decimal_strings_read_as_their_value(d):
    assert math.isclose(to_float(f"  {d}  "), float(d), abs_tol=1e-12)


def test_what_is_not_a_number():
    for value in (True, False, None, "nan", "inf", "1e3", "٣.٥", "Score: 4", "4/5", "1_0", "", "-", [4.0], "4" * 65):
        assert to_float(value) is None, value


@given(st.one_of(st.floats(1, 5), st.text(max_size=8), st.sampled_from(["4.40", "1e0", "٤", " 3 ", "3.", "Score: 4"])))
def test_validation_and_rewards_agree_on_a_mos(solution):
    """A solution validation accepts is one the answer reward reads, and one it refuses the reward reads as no MOS
    (before, validation used float(): "1e0" and "٤" passed it, and the rewards read them as no MOS)."""
    record = {"type": "scoring_image", "image": __file__, "solution": solution}
    accepted = not check_record(record)
    (answer,) = build_reward_funcs(["answer"])
    score = to_float(solution)
    text = f"<answer>Score: {score:.2f}</answer>" if score is not None else "<answer>Score: 3</answer>"
    rewarded = answer([text], solution=[solution])[0] == 1.0
    assert accepted == (score is not None and 1 <= score <= 5)
    assert rewarded == (score is not None)


def test_eval_reads_the_score_after_the_thought_pd_uses(monkeypatch):
    """`--mode expected` with thinking: the thought ends at the close tag `format` accepts, as in Refine's PD (before,
    eval cut at the first `<answer>` and appended `</think>` unless the exact lower-case tag was there)."""
    from vqrl.eval import inference, run

    text = "<think>blurry</Think> so<answer>Score: 2.10</answer>"
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens: text, encode=lambda s, add_special_tokens: [s])
    processor = SimpleNamespace(tokenizer=tok)
    seen = {}
    monkeypatch.setattr(run.V, "encode_prompt", lambda processor, messages: ([1], {}))
    monkeypatch.setattr(run, "build_messages", lambda record, media, cfg: [])
    monkeypatch.setattr(inference, "generate", lambda *a, **k: [[7]])
    def expected_scores(model, processor, ids, visions, thoughts):
        seen["thoughts"] = thoughts
        return [3.0]

    monkeypatch.setattr(inference, "expected_scores", expected_scores)
    args = SimpleNamespace(mode="expected", max_new_tokens=8)
    run._score_decoded(None, processor, [{}], [[]], SimpleNamespace(think=True), args)
    assert seen["thoughts"] == [[thought_of(text)]] == [["<think>blurry</Think>"]]
