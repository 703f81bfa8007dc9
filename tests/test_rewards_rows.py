"""Every row reward's full result, (reward, parse_failed), on constructed rows: parse_failed is what
`parse_fail/<reward>` logs (None: the row is not this reward's task, not counted), so it is pinned with the value.

Values are worked out by hand from each reward's docstring (docs/rewards.md), not read back from the code.
"""

from __future__ import annotations

import math

import pytest

from vqrl.rewards import perception, scoring

T = "<think>t</think>"

CASES = [
    # format: think + answer, the answer must parse (a number on scoring rows)
    (scoring.format_reward, f"{T}<answer>3.5</answer>", {"solution": 3.0}, (1.0, False)),
    (scoring.format_reward, "<answer>3.5</answer>", {"solution": 3.0}, (0.0, False)),  # readable, no think
    (scoring.format_reward, f"{T}<answer>good</answer>", {"solution": 3.0}, (0.0, True)),
    (scoring.format_reward, f"{T}<answer>good</answer>", {"type": "choice_image", "solution": "A"}, (1.0, False)),
    (scoring.format_reward, f"{T}<answer></answer>", {"type": "choice_image", "solution": "A"}, (0.0, True)),
    (scoring.format_reward, f"x {T}<answer>3.5</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_reward, f"{T} x <answer>3.5</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_reward, f"{T}<answer>3.5</answer> x", {"solution": 3.0}, (0.0, False)),
    (scoring.format_reward, f"{T}{T}<answer>3.5</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_reward, f"<answer>3.5</answer>{T}", {"solution": 3.0}, (0.0, False)),
    # format_nothink: exactly one answer, nothing around it, no think
    (scoring.format_nothink_reward, "<answer>3.5</answer>", {"solution": 3.0}, (1.0, False)),
    (scoring.format_nothink_reward, " <answer>3.5</answer>\n", {"solution": 3.0}, (1.0, False)),
    (scoring.format_nothink_reward, "x <answer>3.5</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_nothink_reward, "<answer>3.5</answer> x", {"solution": 3.0}, (0.0, False)),
    (scoring.format_nothink_reward, f"{T}<answer>3.5</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_nothink_reward, "<think><answer>3.5</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_nothink_reward, "<answer>3.5</answer></think>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_nothink_reward, "<answer>bad</answer>", {"solution": 3.0}, (0.0, True)),
    (scoring.format_nothink_reward, "<answer>3.5</answer><answer>3</answer>", {"solution": 3.0}, (0.0, False)),
    # format_strict: the seed's pattern anywhere
    (scoring.format_strict_reward, f"x {T}<answer>Score: 3.50</answer> y", {"solution": 3.0}, (1.0, False)),
    (scoring.format_strict_reward, f"{T}<answer>Score: 3.5</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_strict_reward, "<think></think><answer>Score: 3.50</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.format_strict_reward, f"{T}<answer>Score: x</answer>", {"solution": 3.0}, (0.0, True)),
    # answer_strict: the seed's accuracy, 0.5 with no tolerance
    (scoring.answer_strict_reward, f"{T}<answer>Score: 3.40</answer>", {"solution": 3.0}, (1.0, False)),
    (scoring.answer_strict_reward, f"{T}<answer>Score: 3.50</answer>", {"solution": 3.0}, (1.0, False)),
    (scoring.answer_strict_reward, f"{T}<answer>Score: 3.51</answer>", {"solution": 3.0}, (0.0, False)),
    (scoring.answer_strict_reward, f"{T}<answer>Score: 2.20</answer>", {"solution": 1.7}, (0.0, False)),
    (scoring.answer_strict_reward, f"{T}<answer>Score: 3.40</answer>", {"solution": "x"}, (0.0, None)),
    (scoring.answer_strict_reward, f"x{T}<answer>Score: 3.40</answer>", {"solution": 3.0}, (0.0, True)),
    (scoring.answer_strict_reward, f"x{T}<answer>Score: 3.40</answer>", {"solution": None}, (0.0, None)),
    # answer: |pred - MOS| <= 0.5 decided in decimals
    (scoring.answer_reward, f"{T}<answer>2.20</answer>", {"solution": 1.7}, (1.0, False)),
    (scoring.answer_reward, f"{T}<answer>2.21</answer>", {"solution": 1.7}, (0.0, False)),
    (scoring.answer_reward, f"{T}<answer>1.20</answer>", {"solution": 1.7}, (1.0, False)),
    (scoring.answer_reward, f"{T}<answer>1.19</answer>", {"solution": 1.7}, (0.0, False)),
    (scoring.answer_reward, f"{T}<answer>good</answer>", {"solution": 1.7}, (0.0, True)),
    (scoring.answer_reward, f"{T}<answer>2</answer>", {"solution": "n/a"}, (0.0, None)),
    # score_l1: 1 - |pred - MOS| / 4, floored at 0
    (scoring.score_l1_reward, f"{T}<answer>3</answer>", {"solution": 4.0}, (0.75, False)),
    (scoring.score_l1_reward, f"{T}<answer>4</answer>", {"solution": 3.0}, (0.75, False)),
    (scoring.score_l1_reward, f"{T}<answer>1</answer>", {"solution": 5.5}, (0.0, False)),
    (scoring.score_l1_reward, f"{T}<answer>?</answer>", {"solution": 5.0}, (0.0, True)),
    (scoring.score_l1_reward, f"{T}<answer>1</answer>", {}, (0.0, None)),
    # score_gauss: exp(-(pred - MOS)^2 / (2 * 0.25))
    (scoring.score_gauss_reward, f"{T}<answer>3.5</answer>", {"solution": 3.0}, (math.exp(-0.5), False)),
    (scoring.score_gauss_reward, f"{T}<answer>2</answer>", {"solution": 3.0}, (math.exp(-2.0), False)),
    (scoring.score_gauss_reward, f"{T}<answer>3</answer>", {"solution": 3.0}, (1.0, False)),
    (scoring.score_gauss_reward, f"{T}<answer>?</answer>", {"solution": 3.0}, (0.0, True)),
    (scoring.score_gauss_reward, f"{T}<answer>3</answer>", {"solution": None}, (0.0, None)),
    # distortion: 0.25 for the type, 1 with the severity too
    (perception.distortion_reward, f"{T}<answer>gaussian blur, severity 3</answer>",
     {"type": "distortion_image", "distortion": "Gaussian_Blur", "severity": 3}, (1.0, False)),
    (perception.distortion_reward, f"{T}<answer>gaussian blur, severity 2</answer>",
     {"type": "distortion_image", "distortion": "Gaussian_Blur", "severity": 3}, (0.25, False)),
    (perception.distortion_reward, f"{T}<answer>gaussian blur, severity moderate</answer>",
     {"distortion": "gaussian blur", "severity": "3"}, (1.0, False)),
    (perception.distortion_reward, f"{T}<answer>noise, severity 3</answer>",
     {"type": "distortion_image", "distortion": "blur", "severity": 3}, (0.0, False)),
    (perception.distortion_reward, f"{T}<answer>blur</answer>",
     {"type": "distortion_image", "solution": "blur"}, (1.0, False)),  # no severity label: the type is all
    (perception.distortion_reward, f"{T}<answer>severity 3</answer>",
     {"type": "distortion_image", "distortion": "blur", "severity": 3}, (0.0, True)),
    (perception.distortion_reward, f"{T}<answer></answer>",
     {"type": "distortion_image", "distortion": "blur"}, (0.0, True)),
    (perception.distortion_reward, f"{T}<answer>blur</answer>", {"type": "distortion_image", "solution": 3.0},
     (0.0, None)),
    (perception.distortion_reward, f"{T}<answer>blur</answer>", {"type": "scoring_image", "distortion": "blur"},
     (0.0, None)),
    # choice: the right letter or the right option text
    (perception.choice_reward, f"{T}<answer>B</answer>", {"solution": "B", "options": ["sharp", "blurry"]},
     (1.0, False)),
    (perception.choice_reward, f"{T}<answer>Blurry.</answer>", {"solution": "(B)", "options": ["A. sharp", "B. blurry"]},
     (1.0, False)),
    (perception.choice_reward, f"{T}<answer>sharp</answer>", {"solution": "blurry", "options": ["sharp", "blurry"]},
     (0.0, False)),
    (perception.choice_reward, f"{T}<answer>(A) sharp</answer>", {"solution": "A", "options": []}, (1.0, False)),
    (perception.choice_reward, f"{T}<answer>no idea at all</answer>", {"solution": "A", "options": ["x", "y"]},
     (0.0, True)),
    (perception.choice_reward, f"{T}<answer>A Cat</answer>", {"solution": "a cat!", "options": None}, (1.0, False)),
    (perception.choice_reward, f"{T}<answer>a dog</answer>", {"solution": "a cat", "options": None}, (0.0, False)),
    (perception.choice_reward, f"{T}<answer></answer>", {"solution": "A", "options": ["x"]}, (0.0, True)),
    (perception.choice_reward, f"{T}<answer>A</answer>", {"solution": " ", "options": ["x"]}, (0.0, None)),
    (perception.choice_reward, f"{T}<answer>A</answer>", {"type": "scoring_image", "solution": "A"}, (0.0, None)),
    # iou: with the bbox column, else a box solution
    (perception.iou_reward, f"{T}<answer>[1, 1, 3, 3]</answer>", {"bbox": [0, 0, 2, 2]}, (1 / 7, False)),
    (perception.iou_reward, f"{T}<answer>[0, 0, 2, 2]</answer>", {"solution": [[0, 0, 2, 2]]}, (1.0, False)),
    (perception.iou_reward, f"{T}<answer>[2, 0, 4, 2]</answer>", {"bbox": [0, 0, 2, 2]}, (0.0, False)),  # touching
    (perception.iou_reward, f"{T}<answer>[3, 3, 1, 1]</answer>", {"bbox": [0, 0, 2, 2]}, (0.0, False)),
    (perception.iou_reward, f"{T}<answer>[1, 1, 3]</answer>", {"bbox": [0, 0, 2, 2]}, (0.0, True)),
    (perception.iou_reward, f"{T}<answer>[0, 0, 1, 1]</answer>", {"bbox": [2, 2, 1, 1]}, (0.0, None)),
    (perception.iou_reward, f"{T}<answer>[0, 0, 1, 1]</answer>", {"bbox": [0, 0, 2, 0]}, (0.0, None)),
    (perception.iou_reward, f"{T}<answer>[0, 0, 1, 1]</answer>", {"solution": "[0, 0, 1, 1]"}, (0.0, None)),
    (perception.iou_reward, f"{T}<answer>[0, 0, 1, 1]</answer>", {"type": "choice_image", "bbox": [0, 0, 1, 1]},
     (0.0, None)),
]


@pytest.mark.parametrize("fn, text, row, expected", CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_row_reward_and_parse_failure(fn, text, row, expected):
    value, failed = fn(text, row)
    assert (value, failed) == (pytest.approx(expected[0], abs=1e-12), expected[1])
    assert type(value) is float


# ---------------------------------------------------------------- the registry around the row functions
def test_reward_values_are_clamped_to_their_range_and_non_numbers_score_zero():
    from vqrl.rewards import RewardFunc

    def batch(completions, kwargs, **options):
        return [2.0, -1.0, float("nan"), "x", True, 0.5, float("inf")], [None, False, True, None, False, False, True]

    logged = []
    func = RewardFunc("b", batch, 0.0, 1.0, per_row=False)
    assert func(["c"] * 7, log_metric=lambda k, v: logged.append((k, v))) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.0]
    assert logged == [("parse_fail/b", pytest.approx(2 / 5))]  # the rows whose task applies (not None)
    narrow = RewardFunc("n", batch, 0.25, 0.75, per_row=False)
    assert narrow(["c"] * 7) == [0.75, 0.25, 0.0, 0.0, 0.75, 0.5, 0.0]


def test_a_reward_with_no_applicable_row_logs_no_parse_failure():
    from vqrl.rewards import REWARDS

    logged = []
    assert REWARDS["iou"](["<answer>[0, 0, 1, 1]</answer>"], type=["scoring_image"],
                          log_metric=lambda k, v: logged.append((k, v))) == [0.0]
    assert logged == []


def test_each_row_sees_its_own_columns():
    from vqrl.rewards import RewardFunc

    seen = []
    func = RewardFunc("r", lambda text, row: seen.append((text, row)) or (0.5, False), 0.0, 1.0)
    assert func(["a", [{"role": "assistant", "content": "b"}]], solution=[1, 2], bbox=[[0], [1]], extra=[9, 9]) == \
        [0.5, 0.5]
    none = {"distortion": None, "severity": None, "options": None, "type": None}
    assert seen == [("a", {"solution": 1, "bbox": [0], **none}), ("b", {"solution": 2, "bbox": [1], **none})]


@pytest.mark.parametrize("options, value", [
    ({"answer_threshold": 0}, {"answer_threshold": 0.0}),  # >= 0: zero is a valid threshold
    ({"answer_threshold": 1}, {"answer_threshold": 1.0}),
    ({"gauss_sigma": 1e-9}, {"gauss_sigma": 1e-9}),
    ({"answer_strict_less": True}, {"answer_strict_less": True}),
])
def test_option_values_on_their_boundaries_are_taken(options, value):
    from vqrl.rewards import build_reward_funcs

    (func,) = build_reward_funcs(["answer" if "answer" in next(iter(options)) else "score_gauss"], **options)
    assert {k: func.options[k] for k in value} == value
    assert all(type(func.options[k]) is type(v) for k, v in value.items())


@pytest.mark.parametrize("options, message", [
    ({"gauss_sigma": 0}, "reward option gauss_sigma=0 must be a finite number > 0"),
    ({"fidelity_eps": 0.0}, "reward option fidelity_eps=0.0 must be a finite number > 0"),
    ({"answer_threshold": -0.01}, "reward option answer_threshold=-0.01 must be a finite number >= 0"),
    ({"answer_threshold": "0.5"}, "reward option answer_threshold='0.5' must be a finite number >= 0"),
    ({"answer_strict_less": 1}, "reward option answer_strict_less=1 must be true or false"),
])
def test_option_values_out_of_range_are_refused_with_their_rule(options, message):
    from vqrl.rewards import build_reward_funcs

    with pytest.raises(ValueError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        build_reward_funcs(["answer", "score_gauss", "fidelity_rank"], **options)


# ---------------------------------------------------------------- fidelity_rank's groups
def test_groups_are_blocks_of_num_generations_or_runs_of_sample_ids():
    from vqrl.rewards.ranking import group_index

    assert group_index(6, [None] * 6, 3) == [0, 0, 0, 1, 1, 1]
    assert group_index(4, ["a", "a", "b", "a"], None) == [0, 0, 1, 2]  # runs: a later copy is its own group
    assert group_index(3, ["a", "b", "b"], [1, 1, 1]) == [0, 1, 2]  # num_generations wins over sample ids
    with pytest.raises(ValueError, match=r"^fidelity_rank: the batch of 5 completions is not whole groups of 2$"):
        group_index(5, ["a"] * 5, 2)
    with pytest.raises(ValueError, match="^fidelity_rank needs to know which completions share an image"):
        group_index(2, ["a", None], None)


@pytest.mark.parametrize("values", [[0], [True], [2.0], [[2, 3]], ["2"]])
def test_num_generations_must_be_one_positive_int(values):
    from vqrl.rewards.ranking import _one_generations

    with pytest.raises(ValueError, match=r"^fidelity_rank: num_generations must be one positive int, got \["):
        _one_generations(values)


def test_num_generations_read_from_every_rank():
    from vqrl.rewards.ranking import _one_generations

    assert _one_generations([None, [4, 4], 4]) == 4 and _one_generations([None, None]) is None
    assert _one_generations([1]) == 1


def test_fidelity_of_two_images_by_hand():
    """Two groups of 2: image 0 (MOS 4) answers 3 and 5 (mean 4, var 2), image 1 (MOS 2) answers 2 and 2 (var 0).
    For x = 3 vs image 1: p = Φ((3 - 2) / sqrt(2 + 0 + ε)); image 0 is better (g = 1): reward sqrt(p)."""
    from vqrl.rewards.ranking import fidelity_rewards

    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    got = fidelity_rewards([3.0, 5.0, 2.0, None], [4.0, 4.0, 2.0, 2.0], [0, 0, 1, 1], eps=1e-6)
    p3, p5 = phi(1 / math.sqrt(2 + 1e-6)), phi(3 / math.sqrt(2 + 1e-6))
    p2 = phi((2 - 4) / math.sqrt(0 + 2 + 1e-6))  # image 1 (one score: var 0) against image 0, which is better
    assert got == pytest.approx([math.sqrt(p3), math.sqrt(p5), math.sqrt(1 - p2), 0.0], abs=1e-12)
    equal = fidelity_rewards([3.0, 3.0], [3.0, 3.0], [0, 1], eps=1e-6)  # equal MOS: g = 0.5, equal scores: p = 0.5
    assert equal == pytest.approx([1.0, 1.0])
    assert fidelity_rewards([3.0, 4.0], [3.0, None], [0, 1]) == [0.0, 0.0]  # no MOS: no partner


# ---------------------------------------------------------------- parsing, exactly
@pytest.mark.parametrize("completion, text", [
    ("plain", "plain"),
    ({"role": "assistant", "content": "one"}, "one"),
    ([{"role": "user", "content": "no"}, {"role": "assistant", "content": "a"}, {"content": "b"}], "a\nb"),
    ([{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}, "y", {"text": "z"},
                                        {"type": "text", "text": 5}]}], "xyz"),
    ([{"role": "assistant", "content": 7}], ""),
    (42, ""),
    (None, ""),
])
def test_completion_text_of_each_form(completion, text):
    from vqrl.rewards.parsing import completion_text

    assert completion_text(completion) == text


@pytest.mark.parametrize("answer, number", [
    ("Score: 3.62", 3.62), ("score:4.0", 4.0), ("4.", 4.0), (" 4 ", 4.0), ("3.5.", 3.5), ("4/5", None),
    ("nan", None), ("1e3", None), ("", None), (None, None), ("Score 2", 2.0),
])
def test_parse_number_reads_one_whole_number(answer, number):
    from vqrl.rewards.parsing import parse_number

    assert parse_number(answer) == number


def test_parse_number_and_numbers_in_have_length_limits():
    from vqrl.data.records import MAX_NUMBER_CHARS
    from vqrl.rewards.parsing import numbers_in, parse_number

    fits = "1" + "0" * (MAX_NUMBER_CHARS - 1)
    assert parse_number(fits) == float(fits) and parse_number(fits + "0") is None
    assert numbers_in("1, 2.5 and 30", limit=12) == [1.0, 2.5, 3.0] and numbers_in(None) == []


def test_the_thought_ends_at_the_first_close_tag_or_is_closed():
    from vqrl.rewards.parsing import think_end, thought_of

    assert think_end("<think>a</ think>b</think>") == len("<think>a</ think>") and think_end(3) is None
    assert thought_of("<think>a</Think><answer>4</answer>") == "<think>a</Think>"
    assert thought_of("<think>no close") == "<think>no close</think>"


# ---------------------------------------------------------------- perception parsers, exactly
@pytest.mark.parametrize("answer, parsed", [
    ('{"distortion": "JPEG_compression", "severity": 3}', ("jpegcompression", 3)),
    ('```json\n{"Distortion_Class": "blur", "Level": "serious"}\n```', ("blur", "serious")),
    ('{"type": 5, "name": "noise", "degree": 2}', ("noise", 2)),  # a non-text name is skipped
    ('{"severity": 2}', ("", 2)),
    ("{not json, severity 3", ("notjson", "3")),
    ("gaussian blur, severity 3", ("gaussianblur", "3")),
    ("Distortion: jpeg compression; Severity: moderate", ("jpegcompression", "moderate")),
    ("type is noise\nlevel of 4", ("noise", "4")),
    ("4 severity", ("", "4")),
    ("   ", ("", None)),
])
def test_parse_distortion(answer, parsed):
    assert perception.parse_distortion(answer) == parsed


@pytest.mark.parametrize("value, level", [
    (3, 3), (3.0, 3), ("3", 3), (" Severe ", 4), ("extreme", 5), (3.5, None), ("serious", None), (None, None),
    (True, None),
])
def test_severity_level(value, level):
    assert perception.severity_level(value) == level


@pytest.mark.parametrize("value, box", [
    ([1, 2, 3, 4], (1.0, 2.0, 3.0, 4.0)),
    ([[1, 2, 3, 4]], (1.0, 2.0, 3.0, 4.0)),
    ((1, 2, 3), None),
    ([1, 2, 3, float("inf")], None),
    ([1, 2, "x", 4], None),
    ("box [0, 0, 1, 1] then (2, 3.5, 4, 5)", (2.0, 3.5, 4.0, 5.0)),  # the last box in the text
    ("no box", None),
    (7, None),
])
def test_parse_box(value, box):
    assert perception.parse_box(value) == box
