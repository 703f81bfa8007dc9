"""Reward library: pinned values per reward; the seed's and Q-Insight's rules against our own re-implementations of
their code (property tests); fidelity_rank against the formula; registry; robustness."""

from __future__ import annotations

import itertools
import json
import logging
import math
import pickle
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from vqrl.rewards import (REWARDS, RewardFunc, build_reward_funcs, completion_text, extract_answer, parse_score,
                          reward_options)
from vqrl.rewards import ranking
from vqrl.rewards.parsing import column, think_end

SEED = "<think>The image is sharp, well exposed, with natural colours.</think><answer>Score: 4.40</answer>"


def call(name, completion, **row):
    """One completion through REWARDS[name], with each given column as a one-element list."""
    return REWARDS[name]([completion], **{key: [value] for key, value in row.items()})[0]


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, expected", [
    ("<answer>Score: 3.62</answer>", "Score: 3.62"),
    ("<ANSWER >  4 </ answer>", "4"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("<answer>1</answer> then <answer>2", "1"),  # an unclosed trailing answer is not an answer
    ("<answer>1</answer><answer>unclosed", "1"),
    ("<answer> 3.5 </answer>", "3.5"),
    ("<answer><answer>3</answer></answer>", "3"),
    ("<answer></answer>", ""),
    ("Score: 4", None),
    ("</answer><answer>", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("<answer>Score: 3.62</answer>", 3.62),
    ("<answer>3.6</answer>", 3.6),
    ("<answer>4</answer>", 4.0),
    ("<answer>score:4.0</answer>", 4.0),
    ("<answer> SCORE = 2.5. </answer>", 2.5),
    ("<answer>4/5</answer>", None),
    ("<answer>3 out of 5</answer>", None),
    ("<answer>Score: nan</answer>", None),
    ("<answer>inf</answer>", None),
    ("<answer>1e3</answer>", None),
    ("<answer>٣.٦٢</answer>", None),  # Arabic-Indic digits: float() takes them, we do not
    ("<answer>" + "9" * 400 + "</answer>", None),  # would be inf; too long to be a score anyway
    ("Score: 4.40", None),  # no tags: free text is not an answer
    ("<answer>Score: 2.00</answer><answer>Score: 4.00</answer>", 4.0),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("completion, expected", [
    ("plain", "plain"),
    ([{"role": "assistant", "content": "hi"}], "hi"),
    ([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                        {"type": "text", "text": "b"}]}],
     "ab"),
    ([{"role": "assistant", "content": "x"}, {"role": "tool", "content": "t"}, {"role": "assistant", "content": "y"}],
     "x\ny"),
    ({"role": "assistant", "content": "single"}, "single"),
    ([{"role": "assistant", "content": ["plain part ", {"type": "text", "text": "and a text part"}, 7]}],
     "plain part and a text part"),
    ([{"role": "assistant", "content": None}], ""),
    (None, ""),
    (42, ""),
])
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


def test_column_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="'solution'.*3 values"):
        column({"solution": [1.0]}, "solution", 3)


# ---------------------------------------------------------------- pinned values

def test_seed_example():
    for name in ("answer", "format", "format_strict"):
        assert call(name, SEED, solution=4.4008) == 1.0


def test_seed_example_conversational():
    completion = [{"role": "assistant", "content": [{"type": "text", "text": SEED}]}]
    assert [call(name, completion, solution=4.4008) for name in ("answer", "format", "format_strict")] == [1, 1, 1]


FORMAT_CASES = [
    # completion, row, format, format_strict (the seed's: searched anywhere, non-empty think, literal tags, d.dd)
    (SEED, {"solution": 4.4}, 1, 1),
    ("<think>x</think>\n<answer>\nScore: 3.62\n</answer>\n", {"solution": 4.4}, 1, 1),
    ("<think></think><answer>Score: 3.62</answer>", {"solution": 4.4}, 1, 0),  # the seed needs a non-empty think
    ("<think>x</think><answer>3.6</answer>", {"solution": 4.4}, 1, 0),  # strict wants Score: d.dd
    ("<think>x</think><answer>Score: 3.6</answer>", {"solution": 4.4}, 1, 0),
    ("<think>x</think><answer>Score: ٣.٦٢</answer>", {"solution": 4.4}, 0, 1),  # the seed's \\d is Unicode
    ("  <Think>x</THINK> <answer>4</answer>  ", {"solution": 4.4}, 1, 0),
    ("<think>x</ think><answer>Score: 3.62</answer>", {"solution": 4.4}, 1, 0),
    ("<think>x</think><answer>Score: 3.62</answer>\n\n", {"solution": 4.4}, 1, 1),
    ("<answer>Score: 3.62</answer>", {"solution": 4.4}, 0, 0),
    ("<think>x</think> so <answer>Score: 3.62</answer>", {"solution": 4.4}, 0, 0),
    ("<think>x</think><answer>Score: 3.62</answer> extra", {"solution": 4.4}, 0, 1),  # searched, not anchored
    ("I see. <think>x</think><answer>Score: 3.62</answer>", {"solution": 4.4}, 0, 1),
    ("<think>x<think>y</think><answer>Score: 3.62</answer>", {"solution": 4.4}, 0, 1),  # seed's .+? allows nesting
    ("<think>x</think><answer>Score: 1.00</answer><answer>Score: 3.62</answer>", {"solution": 4.4}, 0, 1),
    ("<think>x</think><answer>Score: 3.62", {"solution": 4.4}, 0, 0),
    ("<think>x</think><answer>Score: 3.625</answer>", {"solution": 4.4}, 1, 0),
    ("<think>x</think><answer>great</answer>", {"solution": 4.4}, 0, 0),
    ("<think>x</think><answer>B</answer>", {"solution": "B", "type": "choice_image"}, 1, 0),
    ("<think>x</think><answer>  </answer>", {"solution": "B", "type": "choice_image"}, 0, 0),
    ("<think>x</think><answer>Score: 3.62</answer>", {}, 1, 1),
    ("", {"solution": 4.4}, 0, 0),
]


@pytest.mark.parametrize("completion, row, fmt, strict", FORMAT_CASES)
def test_format_rewards(completion, row, fmt, strict):
    assert call("format", completion, **row) == fmt
    assert call("format_strict", completion, **row) == strict


SCORE_CASES = [
    # answer text, MOS, answer(0.5), score_l1, score_gauss(σ=0.5)
    ("Score: 4.40", 4.4008, 1, 1 - 0.0008 / 4, math.exp(-0.0008 ** 2 / 0.5)),
    ("Score: 4.90", 4.40, 1, 0.875, math.exp(-0.5)),  # exactly at the threshold counts
    ("Score: 3.50", 4.40, 0, 1 - 0.9 / 4, math.exp(-0.81 / 0.5)),
    ("1", 5.0, 0, 0.0, math.exp(-16 / 0.5)),
    ("9", 1.0, 0, 0.0, math.exp(-64 / 0.5)),  # out of scale: floored at 0
    ("4/5", 4.0, 0, 0.0, 0.0),
]


@pytest.mark.parametrize("answer, mos, acc, l1, gauss", SCORE_CASES)
def test_score_rewards(answer, mos, acc, l1, gauss):
    completion = f"<think>t</think><answer>{answer}</answer>"
    assert call("answer", completion, solution=mos) == acc
    assert call("score_l1", completion, solution=mos) == pytest.approx(l1)
    assert call("score_gauss", completion, solution=mos) == pytest.approx(gauss)


@pytest.mark.parametrize("solution", [None, "A", float("nan"), float("inf"), [1, 2, 3, 4], True])
def test_score_rewards_without_a_usable_mos_give_zero(solution):
    for name in ("answer", "score_l1", "score_gauss"):
        assert call(name, SEED, solution=solution) == 0.0


def test_score_rewards_accept_a_numeric_string_mos():
    assert call("answer", SEED, solution="4.4") == 1.0


def test_options_are_bound_by_build_reward_funcs():
    answer, gauss = build_reward_funcs(["answer", "score_gauss"], answer_threshold=0.35, gauss_sigma=1.0)
    completion = "<answer>4.0</answer>"
    assert answer([completion], solution=[4.4]) == [0.0]
    assert answer([completion], solution=[4.3]) == [1.0]
    assert gauss([completion], solution=[5.0]) == [pytest.approx(math.exp(-0.5))]
    assert REWARDS["answer"]([completion], solution=[4.4]) == [1.0]  # defaults untouched


DISTORTION_CASES = [
    # answer, row, reward
    ('{"distortion": "gaussian_blur", "severity": 3}', {"distortion": "gaussian_blur", "severity": 3}, 1.0),
    ('{"distortion": "Gaussian Blur", "severity": "moderate"}', {"distortion": "gaussian_blur", "severity": 3}, 1.0),
    ('```json\n{"Distortion": "gaussian blur", "Severity": 2}\n```', {"distortion": "gaussian_blur", "severity": 3},
     0.25),
    ('{"distortion": "jpeg", "severity": 3}', {"distortion": "gaussian_blur", "severity": 3}, 0.0),
    ("gaussian blur, severity 3", {"distortion": "gaussian_blur", "severity": 3}, 1.0),
    ("Distortion: jpeg compression; Severity: 4", {"distortion": "JPEG_Compression", "severity": 4}, 1.0),
    ("Distortion: jpeg compression; Severity: severe", {"distortion": "jpeg compression", "severity": "4"}, 1.0),
    ("jpeg compression (severity: mild)", {"distortion": "jpeg_compression", "severity": 4}, 0.25),
    ("jpeg compression", {"distortion": "jpeg_compression", "severity": 4}, 0.25),
    ("motion blur, severity 4", {"distortion": "jpeg_compression", "severity": 4}, 0.0),  # Q-Insight: no credit
    ("extreme noise", {"distortion": "noise", "severity": 5}, 0.0),  # name is "extremenoise": wrong type
    ("white noise", {"solution": "white_noise", "severity": None}, 1.0),  # no severity label: type is all
    ("", {"distortion": "noise", "severity": 1}, 0.0),
    ("{not json", {"distortion": "noise", "severity": 1}, 0.0),
    ('{"distortion": "noise", "severity": 1}', {"solution": 4.2}, 0.0),  # not a distortion row
    # Q-Insight's answer keys and label words
    ('{"distortion_class": "blur", "severity": "serious"}', {"distortion": "blur", "severity": "serious"}, 1.0),
    ('{"distortion_class": "blur", "severity": "obvious"}', {"distortion": "blur", "severity": "serious"}, 0.25),
    ('{"distortion_class": "noise", "severity": "serious"}', {"distortion": "blur", "severity": "serious"}, 0.0),
    ('{"distortion_class": "null", "severity": "null"}', {"distortion": "null", "severity": "null"}, 1.0),
    ("Distortion class: blur; severity: catastrophic", {"distortion": "blur", "severity": "catastrophic"}, 1.0),
    ("blur, severity: serious", {"distortion": "blur", "severity": "catastrophic"}, 0.25),
]


@pytest.mark.parametrize("answer, row, expected", DISTORTION_CASES)
def test_distortion(answer, row, expected):
    assert call("distortion", f"<think>t</think><answer>{answer}</answer>", **row) == expected


OPTIONS = ["sharp", "blurry", "noisy", "over-exposed"]
CHOICE_CASES = [
    ("B", {"solution": "B", "options": OPTIONS}, 1),
    ("(B)", {"solution": "B", "options": OPTIONS}, 1),
    ("B.", {"solution": "B", "options": OPTIONS}, 1),
    ("b", {"solution": "B", "options": OPTIONS}, 1),
    ("B. blurry", {"solution": "B", "options": OPTIONS}, 1),
    ("Blurry", {"solution": "B", "options": OPTIONS}, 1),
    ("over exposed", {"solution": "D", "options": OPTIONS}, 1),
    ("Answer: D", {"solution": "D", "options": OPTIONS}, 1),
    ("A", {"solution": "B", "options": OPTIONS}, 0),
    ("sharp", {"solution": "B", "options": OPTIONS}, 0),
    ("B. sharp", {"solution": "A", "options": OPTIONS}, 0),  # the letter wins over the text after it
    ("B or C", {"solution": "B", "options": OPTIONS}, 0),
    ("blurry", {"solution": "(B)", "options": ["A. sharp", "B. blurry"]}, 1),
    ("A", {"solution": "blurry", "options": ["blurry", "sharp"]}, 1),  # solution given as the option text
    ("B", {"solution": "B"}, 1),  # no options column: letters only
    ("B", {"solution": None, "options": OPTIONS}, 0),
    ("Blurry!", {"solution": "blurry"}, 1),  # free-text solution, no options: the texts are compared
    ("sharp", {"solution": "blurry"}, 0),
]


@pytest.mark.parametrize("answer, row, expected", CHOICE_CASES)
def test_choice(answer, row, expected):
    assert call("choice", f"<think>t</think><answer>{answer}</answer>", **row) == expected


IOU_CASES = [
    ("[0, 0, 10, 10]", {"bbox": [0, 0, 10, 10]}, 1.0),
    ("[0, 0, 10, 10]", {"bbox": [5, 0, 15, 10]}, 50 / 150),
    ('{"bbox_2d": [0.0, 0.0, 10.0, 10.0]}', {"bbox": [[0, 0, 10, 5]]}, 0.5),
    ("(0,0,10,10)", {"solution": [20, 20, 30, 30]}, 0.0),
    ("[0, 0, 10, 10]", {"solution": "[0, 0, 10, 10]"}, 0.0),  # a string solution is a letter/name, not a box
    ("[0, 0, 10, 10]", {"bbox": "[0, 0, 10, 10]"}, 1.0),
    ("[10, 10, 0, 0]", {"bbox": [0, 0, 10, 10]}, 0.0),  # degenerate prediction
    ("[0, 0, 10, 10]", {"bbox": [0, 0, 0, 10]}, 0.0),  # degenerate truth
    ("[0, 50, 10, 100]", {"bbox": [0, 50, 10, 100]}, 1.0),  # a tall, narrow box (y1 > x2) is a valid truth
    ("[0, 50, 10, 100]", {"bbox": [0, 50, 10, 50]}, 0.0),  # zero height: degenerate truth
    ("[0, 0, 10]", {"bbox": [0, 0, 10, 10]}, 0.0),
    ("[0, 0, nan, 10]", {"bbox": [0, 0, 10, 10]}, 0.0),
    ("[0, 0, 1e999, 10]", {"bbox": [0, 0, 10, 10]}, 0.0),
    ("no box", {"bbox": [0, 0, 10, 10]}, 0.0),
]


@pytest.mark.parametrize("answer, row, expected", IOU_CASES)
def test_iou(answer, row, expected):
    assert call("iou", f"<think>t</think><answer>{answer}</answer>", **row) == pytest.approx(expected)


def test_a_readable_wrong_distortion_is_a_wrong_answer_not_a_parse_failure():
    """parse_fail/distortion counts answers the reward could not read: a clearly named but wrong distortion is read
    (it scores 0), an empty answer is not."""
    from vqrl.rewards.perception import distortion_reward
    row = {"distortion": "gaussian_blur", "severity": 3}
    assert distortion_reward("<think>t</think><answer>jpeg compression</answer>", row) == (0.0, False)
    assert distortion_reward("<think>t</think><answer>gaussian blur</answer>", row) == (0.25, False)
    assert distortion_reward("<think>t</think><answer></answer>", row) == (0.0, True)
    logged = []
    REWARDS["distortion"](["<think>t</think><answer>jpeg compression</answer>", "<think>t</think><answer></answer>"],
                          distortion=["gaussian_blur"] * 2, severity=[3, 3],
                          log_metric=lambda k, v: logged.append((k, v)))
    assert logged == [("parse_fail/distortion", pytest.approx(0.5))]


def test_a_functions_options_are_its_keyword_parameters_with_defaults_not_trls_names():
    """A custom reward's options (what --reward_kwargs may set) are its parameters with a default that can be passed
    by keyword: not one without a default, not *args/**kwargs, not a name TRL or the data pass (RESERVED)."""
    from vqrl.rewards.registry import options_of

    def fn(completions, solution, needed, scale=2.0, *args, trainer_state=None, margin=0.5, **kwargs):
        return []

    assert options_of(fn) == {"scale": 2.0, "margin": 0.5}
    assert options_of(fn, skip=0) == {"scale": 2.0, "margin": 0.5}
    assert options_of(len) == {}  # a builtin without a readable signature


def test_parse_failures_are_logged_per_reward():
    logged = []
    completions = [SEED, "garbage", "<answer>Score: 2</answer>", "<answer>x</answer>"]
    REWARDS["answer"](completions, solution=[4.4, 4.4, None, 4.4], log_metric=lambda k, v: logged.append((k, v)))
    assert logged == [("parse_fail/answer", pytest.approx(2 / 3))]  # the row without a MOS is not counted
    logged.clear()
    REWARDS["choice"](completions, solution=[None] * 4, log_metric=lambda k, v: logged.append((k, v)))
    assert logged == []  # no row where the reward applies: nothing to report


def test_unknown_kwargs_and_trl_extras_are_ignored():
    out = REWARDS["answer"]([SEED], solution=[4.4], prompts=["p"], completion_ids=[[1, 2]], trainer_state=object(),
                            log_extra=lambda *a: None, whatever=[1])
    assert out == [1.0]


ANSWER_STRICT_CASES = [
    # completion, solution, answer_strict (the seed's accuracy reward)
    (SEED, 4.4008, 1),
    ("<think>x</think><answer>Score: 4.90</answer>", 4.4, 1),   # 4.9 - 4.4 == 0.5 in floats: counts
    ("<think>x</think><answer>Score: 2.20</answer>", 1.7, 0),   # 0.5000000000000002 in floats: the seed says no
    ("<think>x</think><answer>Score: 4.40</answer>", "4.4", 1),  # float(str(solution))
    ("<think></think><answer>Score: 4.40</answer>", 4.4, 0),    # empty think
    (" <think>x</think><answer>Score: 4.40</answer>", 4.4, 0),  # re.match: nothing before <think>
    ("<think>x</think><answer>Score: 4.40</answer> trailing text", 4.4, 1),
    ("<think>x</think><answer>Score: 1.00</answer> <answer>Score: 4.40</answer>", 4.4, 1),  # the last answer
    ("<think>x</think><answer>Score: 4.40</answer> <answer>Score: 1.00</answer>", 4.4, 0),
    ("<think>x</think><answer>Score: 4.40</answer> <answer>4.0</answer>", 4.4, 1),  # not the seed's shape: skipped
    ("<think>x</Think><answer>Score: 4.40</answer>", 4.4, 0),   # literal tags
    ("<think>x</think><answer>4.40</answer>", 4.4, 0),
    ("<think>x</think><answer>Score: ٤.٤٠</answer>", 4.4, 1),   # Unicode digits, as Python's \d and float()
    ("<think>x</think><answer>Score: 4.40</answer>", None, 0),  # the seed would crash: 0
    ("<think>x</think><answer>Score: 4.40</answer>", "B", 0),
    ("<think>x</think><answer>Score: 4.40</answer>", float("nan"), 0),
    ("<answer>Score: 4.40</answer>", 4.4, 0),                    # the format gate: no think, no reward
]


@pytest.mark.parametrize("completion, solution, expected", ANSWER_STRICT_CASES)
def test_answer_strict(completion, solution, expected):
    assert call("answer_strict", completion, solution=solution) == expected
    assert seed_accuracy_reference(completion, solution) == expected


def test_answer_strict_less_is_qinsight_strict_test():
    less, le = build_reward_funcs(["answer", "answer"], answer_threshold=0.35, answer_strict_less=True)[0], \
        build_reward_funcs(["answer"], answer_threshold=0.35)[0]
    # 4.05 - 3.70 is 0.34999999999999964 in floats; in decimals it is the threshold itself: < says no, <= says yes.
    at_threshold = "<think>t</think><answer>Score: 4.05</answer>"
    assert less([at_threshold], solution=[3.70]) == [0.0] and le([at_threshold], solution=[3.70]) == [1.0]
    assert less([at_threshold], solution=[3.71]) == [1.0]
    assert less([at_threshold], solution=[4.40]) == [0.0]


# ---------------------------------------------------------------- the seed's and Q-Insight's rules, re-implemented
# Written from reading jzhws/VisualQualityAssessment-RL-Trainer src/open_r1/grpo.py (format_reward, answer_reward)
# and bytedance/Q-Insight src/open-r1-multimodal/src/open_r1/qinsight_multi_task.py (score_reward): backtracking
# regular expressions as the sources run them, no attention to speed.
SEED_PATTERN = r"<think>(.+?)</think>\s*<answer>\s*Score:\s*(\d{1}\.\d{2})\s*</answer>"
SEED_ANSWER = r"<answer>\s*Score:\s*(\d{1}\.\d{2})\s*</answer>"


def seed_format_reference(text):
    return 1 if re.search(SEED_PATTERN, text, re.DOTALL) else 0


def seed_accuracy_reference(text, solution):
    """1/0 as the seed computes it; where the seed would raise (a MOS float() refuses), 0 as we document."""
    if not re.match(SEED_PATTERN, text, re.DOTALL):
        return 0
    pred = float(list(re.finditer(SEED_ANSWER, text, re.DOTALL))[-1].groups()[-1])
    try:
        mos = float(str(solution))
    except ValueError:
        return 0
    return 1 if abs(pred - mos) <= 0.5 else 0


def qinsight_distortion_reference(text, truth_class, truth_severity):
    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if not match:
        return 0.0
    found = re.search(r"\"distortion_class\"\s*:\s*\"([^\"]+)\".*?\"severity\"\s*:\s*\"([^\"]+)\"",
                      match.group(1).strip(), re.DOTALL)
    reward = 0.0
    if found and found.group(1).strip() == truth_class:
        reward += 0.25
        if found.group(2).strip() == truth_severity:
            reward += 0.75
    return reward


SEED_FRAGMENTS = ["<think>", "</think>", "</Think>", "</ think>", "<Think>", "<think></think>", "<answer>",
                  "</answer>", "<Answer>", "</ answer>", "Score:", "Score: ", "score:", " ", "\n", "\t", "\u00a0",
                  "\u2003", "4", "4.40", "3.62", ".", "٣", "𝟒", "x", "think", "<", ">", "/", "Score: 4.4",
                  "Score: 4.400", "<answer>Score: 4.40</answer>", "<think>t</think>"]
# A seed-shaped completion as parts: (valid part, variants). A draw mutates at most three parts, so most draws are
# near the rule's boundary instead of far from it.
SEED_PARTS = [
    ("", [" ", "x", "<think>a</think>", "\n", "<answer>Score: 4.40</answer>"]),
    ("<think>", ["<Think>", "< think>", "", "<think><think>"]),
    ("looks sharp", ["", "\n", "a</think>b", "<answer>Score: 1.00</answer>", "</ think>", "x" * 3]),
    ("</think>", ["</Think>", "</ think>", "</think></think>", "", "</think >"]),
    ("", [" ", "\n", "\u00a0", "x", "\n\n"]),
    ("<answer>", ["<Answer>", "< answer>", "", "<answer><answer>"]),
    ("", [" ", "\n", "\u2003", "x"]),
    ("Score:", ["score:", "Score", "Score: Score:", ""]),
    (" ", ["", "\n", "  ", "\u00a0", "x"]),
    ("4", ["٤", "𝟒", "44", "", "-4", "x"]),
    (".", [",", "", ".."]),
    ("40", ["4", "400", "٤٠", "4x", ""]),
    ("", [" ", "\n", "\u2003", "x"]),
    ("</answer>", ["</Answer>", "</answer >", "", "</answer></answer>"]),
    ("", ["\n", " trailing", "<answer>Score: 1.00</answer>", "<answer>Score: 4.90</answer>", "\n\n"]),
]


@st.composite
def seed_like(draw):
    mutated = draw(st.sets(st.integers(0, len(SEED_PARTS) - 1), max_size=3))
    return "".join(draw(st.sampled_from(variants)) if i in mutated else valid
                   for i, (valid, variants) in enumerate(SEED_PARTS))


seed_texts = st.one_of(seed_like(), seed_like(), st.lists(st.sampled_from(SEED_FRAGMENTS), max_size=24).map("".join),
                       st.text(max_size=60))
mos_values = st.one_of(st.floats(1, 5), st.sampled_from([4.4, 4.9, 3.9, 3.89, 4.0, 1.0, 5.0, "4.4", 3.9000000000000004]),
                       st.none(), st.sampled_from(["B", "", float("nan"), float("inf"), True, [4.4]]))


@settings(max_examples=2000, deadline=None)
@given(seed_texts, mos_values)
def test_format_strict_and_answer_strict_are_the_seeds_rules(text, mos):
    assert call("format_strict", text, solution=mos) == seed_format_reference(text)
    assert call("answer_strict", text, solution=mos) == seed_accuracy_reference(text, mos)


def test_format_strict_is_linear_on_adversarial_input():
    texts = ["<think>" * 200_000, "<think>x" + "</think> " * 100_000, "<think>x</think>" + " " * 500_000 + "<answer>"]
    start = time.perf_counter()
    assert REWARDS["format_strict"](texts, solution=[4.0] * 3) == [0.0] * 3
    assert REWARDS["answer_strict"](texts, solution=[4.0] * 3) == [0.0] * 3
    assert time.perf_counter() - start < 2.0


QINSIGHT_CLASSES = ["noise", "compression", "blur", "darken", "null"]
QINSIGHT_SEVERITIES = ["slight", "moderate", "obvious", "serious", "catastrophic", "null"]


def test_distortion_equals_qinsight_on_its_answers():
    """On Q-Insight's own answers (its JSON keys and label words, one answer per completion), every combination of
    answered and true labels: `distortion` gives Q-Insight's reward. It is more lenient elsewhere (case, spacing,
    numbers, our keys), see docs/rewards.md."""
    combos = itertools.product(QINSIGHT_CLASSES, QINSIGHT_SEVERITIES, QINSIGHT_CLASSES, QINSIGHT_SEVERITIES)
    layouts = itertools.cycle(itertools.product(["", " ", "\n"], [False, True]))
    for (pred_class, pred_severity, truth_class, truth_severity), (pad, fenced) in zip(combos, layouts):
        body = json.dumps({"distortion_class": pred_class, "severity": pred_severity})
        answer = f"```json\n{body}\n```" if fenced else body
        text = f"<think>\nlooks {pred_class}\n</think>\n<answer>{pad}{answer}{pad}</answer>"
        ours = call("distortion", text, type="distortion_image", distortion=truth_class, severity=truth_severity)
        assert ours == qinsight_distortion_reference(text, truth_class, truth_severity), text


@settings(max_examples=1000, deadline=None)
@given(st.integers(100, 500), st.floats(1, 5))
def test_answer_thresholds_equal_seed_and_qinsight_tests(pred_hundredths, mos):
    """answer (<= 0.5, the seed) and answer_strict_less (< 0.35, Q-Insight) against the sources' comparisons, away
    from the threshold itself (there we decide in decimals, the sources in binary floats: docs/rewards.md)."""
    pred = pred_hundredths / 100
    text = f"<think>t</think><answer>Score: {pred:.2f}</answer>"
    qinsight = build_reward_funcs(["answer"], answer_threshold=0.35, answer_strict_less=True)[0]
    if abs(abs(pred - mos) - 0.35) > 1e-9:
        assert qinsight([text], solution=[mos]) == [1.0 if abs(pred - mos) < 0.35 else 0.0]
    if abs(abs(pred - mos) - 0.5) > 1e-9:
        assert call("answer", text, solution=mos) == (1.0 if abs(pred - mos) <= 0.5 else 0.0)


@pytest.mark.parametrize("text, expected", [
    ("<think>a</think><answer>4</answer>", "<think>a</think>"),
    ("<think>a</Think><answer>Score: 4.40</answer>", "<think>a</Think>"),
    ("<think>a</ think >b</think>", "<think>a</ think >"),  # the first close tag, as `format` reads it
    ("<think>a <answer>Score: 4.40</answer>", None),
    (None, None),
])
def test_think_end_is_formats_close_tag(text, expected):
    end = think_end(text)
    assert (text[:end] if end is not None else None) == expected


# ---------------------------------------------------------------- fidelity_rank

def reference_fidelity(scores, mos, G, eps=1e-6):
    """VisualQuality-R1's formula, written out independently with numpy loops over a (images × G) grid."""
    x = np.array([np.nan if s is None else s for s in scores], dtype=float).reshape(-1, G)
    m = np.array(mos, dtype=float).reshape(-1, G)[:, 0]
    valid = ~np.isnan(x)
    mu = np.array([x[i][valid[i]].mean() if valid[i].any() else np.nan for i in range(len(x))])
    var = np.array([x[i][valid[i]].var(ddof=1) if valid[i].sum() > 1 else 0.0 for i in range(len(x))])
    out = np.zeros_like(x)
    for i in range(len(x)):
        others = [z for z in range(len(x)) if z != i and valid[z].any()]
        for j in range(G):
            if not valid[i, j] or not others:
                continue
            terms = []
            for z in others:
                p = norm.cdf((x[i, j] - mu[z]) / np.sqrt(var[i] + var[z] + eps))
                g = 1.0 if m[i] > m[z] else 0.0 if m[i] < m[z] else 0.5
                terms.append(np.sqrt(p * g) + np.sqrt((1 - p) * (1 - g)))
            out[i, j] = np.mean(terms)
    return out.ravel().tolist()


def answer_text(score):
    return "<think>t</think><answer>nothing</answer>" if score is None else f"<answer>Score: {score:.2f}</answer>"


BATCH_SCORES = [3.5, 3.9, None, 4.2, 2.0, 2.5, 2.25, None, 4.0, 4.0, 3.0, 3.75]
BATCH_MOS = [4.1] * 4 + [2.3] * 4 + [3.6] * 4


def test_fidelity_rank_matches_the_formula():
    completions = [answer_text(s) for s in BATCH_SCORES]
    expected = reference_fidelity(BATCH_SCORES, BATCH_MOS, 4)
    got = REWARDS["fidelity_rank"](completions, solution=BATCH_MOS, num_generations=4)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[2] == got[7] == 0.0 and all(0 < v <= 1 for i, v in enumerate(got) if i not in (2, 7))


def test_fidelity_rank_groups_by_sample_id_or_per_row_num_generations():
    completions = [answer_text(s) for s in BATCH_SCORES]
    expected = reference_fidelity(BATCH_SCORES, BATCH_MOS, 4)
    ids = [f"img{i // 4}" for i in range(12)]
    assert REWARDS["fidelity_rank"](completions, solution=BATCH_MOS, sample_id=ids) == pytest.approx(expected)
    per_row = REWARDS["fidelity_rank"](completions, solution=BATCH_MOS, num_generations=[4] * 12)
    assert per_row == pytest.approx(expected)


def test_fidelity_rank_skips_groups_without_any_score():
    scores = [None] * 4 + BATCH_SCORES[4:]
    got = REWARDS["fidelity_rank"]([answer_text(s) for s in scores], solution=BATCH_MOS, num_generations=4)
    assert got[:4] == [0.0] * 4
    assert got[4:] == pytest.approx(reference_fidelity(BATCH_SCORES[4:], BATCH_MOS[4:], 4))


def test_fidelity_rank_equal_mos_and_equal_scores():
    # Same MOS: g = 0.5; one score per image: σ = 0 and p is nearly a step (ε = 1e-6).
    got = REWARDS["fidelity_rank"]([answer_text(3.0), answer_text(3.0)], solution=[3.0, 3.0], num_generations=1)
    assert got == pytest.approx([1.0, 1.0])  # p = 0.5, g = 0.5: sqrt(.25) + sqrt(.25)
    got = REWARDS["fidelity_rank"]([answer_text(4.0), answer_text(2.0)], solution=[4.0, 2.0], num_generations=1)
    assert got == pytest.approx([1.0, 1.0])  # both ordered right with certainty


def test_fidelity_rank_single_image_gives_zero_and_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(ranking, "_warned_single_image", False)
    with caplog.at_level(logging.WARNING, logger="vqrl.rewards.ranking"):
        REWARDS["fidelity_rank"]([answer_text(3.0)] * 8, solution=[3.0] * 4 + [4.0] * 4, num_generations=4)
        assert caplog.records == []  # two images: nothing to say
        for _ in range(3):
            got = REWARDS["fidelity_rank"]([answer_text(3.0)] * 4, solution=[3.0] * 4, num_generations=4)
            assert got == [0.0] * 4
    assert [r.getMessage() for r in caplog.records if "single image" in r.getMessage()] == [
        "fidelity_rank: this step holds a single image over all 1 process(es), so every reward is 0 (nothing to rank "
        "against); hold several images per step: per_device_train_batch_size x steps_per_generation x processes >= "
        "2 x num_generations"]


def test_fidelity_rank_needs_groups():
    with pytest.raises(ValueError, match="num_generations.*sample_id"):
        REWARDS["fidelity_rank"]([answer_text(3.0)] * 2, solution=[3.0, 2.0])
    with pytest.raises(ValueError, match="whole groups of 4"):
        REWARDS["fidelity_rank"]([answer_text(3.0)] * 6, solution=[3.0] * 6, num_generations=4)
    with pytest.raises(ValueError, match="one positive int"):
        REWARDS["fidelity_rank"]([answer_text(3.0)] * 2, solution=[3.0] * 2, num_generations=[1, 2])


def test_fidelity_rank_logs_parse_failures():
    logged = []
    REWARDS["fidelity_rank"]([answer_text(s) for s in BATCH_SCORES], solution=BATCH_MOS, num_generations=4,
                             log_metric=lambda k, v: logged.append((k, v)))
    assert logged == [("parse_fail/fidelity_rank", pytest.approx(2 / 12))]


# ---------------------------------------------------------------- registry

def user_reward(completions, **kwargs):
    return [0.5 for _ in completions]


def test_registry_names_and_trl_metric_names():
    assert set(REWARDS) == {"format", "format_strict", "format_nothink", "answer", "answer_strict", "score_l1",
                            "score_gauss", "fidelity_rank", "distortion", "choice", "iou"}
    for name, func in REWARDS.items():
        assert func.__name__ == name
    funcs = build_reward_funcs(list(REWARDS), answer_threshold=0.35)
    assert [f.__name__ for f in funcs] == list(REWARDS)
    from trl.trainer.utils import get_callable_name, is_async_callable
    assert [get_callable_name(f) for f in funcs] == list(REWARDS)
    assert not any(is_async_callable(f) for f in funcs)
    answer = funcs[list(REWARDS).index("answer")]
    assert pickle.loads(pickle.dumps(answer))([SEED], solution=[4.0]) == [0.0]  # 0.4 off > 0.35
    assert pickle.loads(pickle.dumps(answer))([SEED], solution=[4.1]) == [1.0]


def test_user_function_by_module_path():
    (func,) = build_reward_funcs([f"{__name__}:user_reward"])
    assert func is user_reward
    (func,) = build_reward_funcs(["math:fsum"])
    assert func is math.fsum


@pytest.mark.parametrize("entry, message", [
    ("accuracy", r"unknown reward 'accuracy': use one of format, .*fidelity_rank.* or `package.module:function`"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("math:no_such_function", "module 'math' has no attribute 'no_such_function'"),
    ("math:pi", "is a float, not a function"),
    ("os.system('x'):f", "expected `package.module:function`"),
    ("math:__import__('os')", "expected `package.module:function`"),
    (None, "unknown reward None"),
])
def test_bad_reward_names(entry, message):
    with pytest.raises(ValueError, match=message):
        build_reward_funcs([entry])


@pytest.mark.parametrize("options", [{"answer_threshold": -1}, {"gauss_sigma": 0}, {"fidelity_eps": float("nan")},
                                     {"gauss_sigma": "1"}])
def test_bad_options(options):
    with pytest.raises(ValueError, match="must be a finite number"):
        build_reward_funcs(["answer"], **options)
    with pytest.raises(ValueError, match="answer_strict_less='yes' must be true or false"):
        build_reward_funcs(["answer"], answer_strict_less="yes")


def test_reward_options_come_from_the_config():
    config = SimpleNamespace(answer_threshold=0.35, answer_strict_less=True, gauss_sigma=None, other=1)
    assert reward_options(config) == {"answer_threshold": 0.35, "answer_strict_less": True}
    (answer,) = build_reward_funcs(["answer"], **reward_options(config))
    assert answer.options == {"answer_threshold": 0.35, "answer_strict_less": True}
    from vqrl.config import VQRLConfig

    fields = VQRLConfig.__dataclass_fields__
    assert {"answer_threshold", "answer_strict_less", "gauss_sigma"} <= set(fields)


# ---------------------------------------------------------------- robustness

RANGES = {name: {0.0, 1.0} for name in ("format", "format_strict", "format_nothink", "answer", "answer_strict",
                                        "choice")}
RANGES["distortion"] = {0.0, 0.25, 1.0}


def check_outputs(name, out, n):
    assert isinstance(out, list) and len(out) == n
    for value in out:
        assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0
        if name in RANGES:
            assert value in RANGES[name]


class Raised(logging.Handler):
    """Collects the registry's "reward raised" warnings: a swallowed exception is still a bug."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def all_rewards(completions, **columns):
    n = len(completions)
    columns.setdefault("num_generations", 1)
    columns.setdefault("sample_id", [str(i) for i in range(n)])
    raised = Raised()
    logging.getLogger("vqrl.rewards.registry").addHandler(raised)
    try:
        for name, func in REWARDS.items():
            check_outputs(name, func(completions, **columns), n)
    finally:
        logging.getLogger("vqrl.rewards.registry").removeHandler(raised)
    assert raised.messages == []


HUGE = [
    "<answer>" * 60_000 + "Score: 3" + "</answer>" * 60_000,
    "<think>" + "x" * 1_000_000 + "</think><answer>Score: 3.00</answer>",
    "</think><answer>" * 60_000,
    "<" + " " * 1_000_000 + "answer>",
    "<answer>" + "9" * 1_000_000 + "</answer>",
    "<answer>[" + "1," * 500_000 + "]</answer>",
    "<answer>" + "{" * 1_000_000 + "</answer>",
    "<answer>" + "[" * 3_000 + "</answer>",
    "<answer>" + "severity " * 100_000 + "</answer>",
    "<answer>" + "(" * 1_000 + "</answer>",
]


def test_huge_and_adversarial_completions_are_fast_and_zero_or_valid():
    start = time.perf_counter()
    columns = {"solution": [3.0] * len(HUGE), "bbox": [[0, 0, 1, 1]] * len(HUGE),
               "distortion": ["noise"] * len(HUGE), "severity": [3] * len(HUGE), "options": [OPTIONS] * len(HUGE)}
    all_rewards(HUGE, **columns)
    assert time.perf_counter() - start < 5.0
    assert REWARDS["format_strict"](HUGE[1:2], solution=[3.0]) == [1.0]


@pytest.mark.parametrize("completion", ["", "<think>", "</answer>", "<answer>", "<answer></answer>", "\x00", "🙂"])
def test_empty_and_broken_completions_score_zero(completion):
    row = {"solution": 3.0, "bbox": [0, 0, 1, 1], "distortion": "noise", "severity": 1, "options": OPTIONS}
    for name in REWARDS:
        if name != "fidelity_rank":
            assert call(name, completion, **row) == 0.0, name


def test_empty_batch():
    for func in REWARDS.values():
        assert func([], solution=[], num_generations=4) == []


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "< answer >", "</ANSWER>", "Score:", "score", "3.62",
             "4", ".", "-", "nan", "inf", "1e309", "٣", "٫", "/5", " ", "\n", "[", "]", ",", "{", "}", '"', ":",
             "severity", "gaussian blur", "moderate", "A", "(B)", "blurry", "9" * 70, "0.5"]
adversarial = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)
texts = st.one_of(st.text(max_size=200), adversarial)
completion = st.one_of(
    texts,
    texts.map(lambda t: [{"role": "assistant", "content": t}]),
    texts.map(lambda t: [{"role": "assistant", "content": [{"type": "text", "text": t}]}]),
    st.none(),
)
values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), texts,
                   st.lists(st.floats(-5, 20), max_size=5), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_reward_is_finite_and_in_range(data):
    n = data.draw(st.integers(0, 8))
    completions = data.draw(st.lists(completion, min_size=n, max_size=n))
    columns = {key: data.draw(st.lists(values, min_size=n, max_size=n))
               for key in ("solution", "distortion", "severity", "bbox", "type")}
    columns["options"] = data.draw(st.lists(st.one_of(st.none(), st.lists(texts, max_size=4)), min_size=n, max_size=n))
    runs = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    columns["sample_id"] = [str(sum(runs[:i + 1])) for i in range(n)]  # consecutive runs of equal ids
    columns["num_generations"] = data.draw(st.sampled_from([None, 1]))  # None: fidelity_rank groups by sample_id
    all_rewards(completions, **columns)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(-1e6, 1e6)), st.floats(1, 5)), min_size=1, max_size=6),
       st.integers(1, 4))
def test_fidelity_rank_is_in_range_for_any_scores(images, G):
    scores = [s for s, _ in images for _ in range(G)]
    mos = [m for _, m in images for _ in range(G)]
    completions = [answer_text(s) if s is None else f"<answer>{s!r}</answer>" for s in scores]
    check_outputs("fidelity_rank", REWARDS["fidelity_rank"](completions, solution=mos, num_generations=G), len(scores))


def test_a_row_that_raises_scores_zero_and_is_reported(caplog):
    def broken(text, row):
        raise RuntimeError("bug")

    func = RewardFunc("broken", broken, 0.0, 1.0)
    logged = []
    assert func(["a", "b"], log_metric=lambda k, v: logged.append((k, v))) == [0.0, 0.0]
    assert logged == [("parse_fail/broken", 1.0)]
    assert "reward broken raised on completion 0" in caplog.text
    failures = [r for r in caplog.records if "raised on completion" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)  # the traceback


def test_mixed_stage1_batch_each_reward_grades_its_own_task():
    # Rows shaped like `vqrl make-perception-data` output: every record carries distortion, severity and bbox.
    common = {"distortion": "darken", "severity": 4, "bbox": [71, 68, 179, 163]}
    rows = [
        {**common, "type": "distortion_image", "solution": "darken", "options": None},
        {**common, "type": "choice_image", "solution": "D",
         "options": ["motion_blur", "saturation_loss", "gaussian_blur", "darken"]},
        {**common, "type": "grounding_image", "solution": [71, 68, 179, 163], "options": None},
        {"type": "scoring_image", "solution": 3.2, "distortion": None, "severity": None, "bbox": None,
         "options": None},
    ]
    answers = ['{"distortion": "darken", "severity": 4}', "D", "[71, 68, 179, 163]", "Score: 3.20"]
    completions = [f"<think>t</think><answer>{a}</answer>" for a in answers]
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    expected = {"distortion": [1, 0, 0, 0], "choice": [0, 1, 0, 0], "iou": [0, 0, 1, 0], "answer": [0, 0, 0, 1],
                "answer_strict": [0, 0, 0, 1], "format": [1, 1, 1, 1], "format_strict": [0, 0, 0, 1]}
    for name, values in expected.items():
        logged = []
        assert REWARDS[name](completions, log_metric=lambda k, v: logged.append(v), **columns) == values, name
        assert logged == [0.0], name  # parse failures are counted over the reward's own rows only


@pytest.mark.parametrize("text, expected", [
    ("<answer>Score: 3.62</answer>", 1.0),
    ("  <answer>4</answer>\n", 1.0),
    ("<think>x</think><answer>Score: 3.62</answer>", 0.0),   # thinking is not no-think
    ("I think <answer>3</answer>", 0.0),                      # text around the answer
    ("<answer>3</answer><answer>4</answer>", 0.0),
    ("<answer>great</answer>", 0.0),                          # scoring answers must parse
    ("", 0.0),
])
def test_format_nothink(text, expected):
    from vqrl.rewards import REWARDS

    assert REWARDS["format_nothink"]([text], solution=[3.5], type=["scoring_image"]) == [expected]


def test_a_severity_label_compares_by_its_level_and_its_words_only():
    """A number is a level (not also a text); a word is its text (and its level when it has one); a label with no
    letters or digits is no label at all, so it cannot match another such label."""
    from vqrl.rewards.perception import _severity_keys

    assert _severity_keys(3) == {("level", 3)}
    assert _severity_keys("serious") == {("text", "serious")}
    assert _severity_keys("—") == set() and _severity_keys(None) == set()


def test_a_free_text_choice_answer_that_differs_is_wrong_not_unreadable():
    from vqrl.rewards.perception import choice_reward

    assert choice_reward("<answer>sharp</answer>", {"solution": "blurry"}) == (0.0, False)
    assert choice_reward("<answer>blurry</answer>", {"solution": "Blurry"}) == (1.0, False)


def test_numbers_in_reads_signed_decimals_and_nothing_from_a_non_string():
    from vqrl.rewards.parsing import numbers_in

    assert numbers_in("box 1, 2.5 and -3 then 40") == [1.0, 2.5, -3.0, 40.0]
    assert numbers_in(None) == [] and numbers_in(["1"]) == []


def test_a_reward_value_that_is_not_a_finite_number_counts_as_zero_and_the_rest_is_clamped():
    """Whatever a custom row function returns, TRL gets a finite number in [low, high]: None, text, NaN or an
    infinity is 0; True is 1; a number outside the range is clamped."""
    values = iter([None, "high", float("nan"), float("inf"), True, 7.5, -2.0, "0.25"])
    func = RewardFunc("custom", lambda text, row: (next(values), False), 0.0, 2.0)
    assert func(["c"] * 8) == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.25]


def test_a_reward_names_itself_and_its_options():
    answer, fmt = build_reward_funcs(["answer", "format"], answer_threshold=0.35)
    assert repr(answer) == "<reward answer, answer_threshold=0.35, answer_strict_less=False>"
    assert repr(fmt) == "<reward format>"


@pytest.mark.parametrize("text, body", [
    ('```json\n{"distortion": "blur"}\n```', '{"distortion": "blur"}'),
    ('```{"distortion": "blur"}```', '{"distortion": "blur"}'),  # a one-line block
    ('{"distortion": "blur"}', '{"distortion": "blur"}'),
    ("```\nx", "x"),  # an unclosed block
    (" plain ", "plain"),
])
def test_a_markdown_code_block_is_unwrapped_to_its_body(text, body):
    from vqrl.rewards.perception import _unfence

    assert _unfence(text) == body


def test_a_malformed_completion_reads_as_the_empty_text():
    class Unreadable(list):
        def __iter__(self):
            raise RuntimeError("cannot iterate")

    assert completion_text(Unreadable([1])) == ""
    assert completion_text([{"role": "assistant", "content": Unreadable()}]) == ""


def test_a_user_reward_without_a_readable_signature_is_taken_as_is():
    assert build_reward_funcs(["builtins:max"]) == [max]  # inspect.signature(max) raises ValueError
    with pytest.raises(ValueError, match=r"^unknown reward option 'key': no reward takes it"):
        build_reward_funcs(["builtins:max"], key=len)
