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
