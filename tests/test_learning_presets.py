"""The learning check's presets become the GRPO flags they say (vqrl.learning.check / grpo_run.grpo_flags, parsed by
vqrl.grpo as a run parses them), and its perception warm-up's targets and their accuracy read the records."""

from __future__ import annotations

from pathlib import Path

import pytest

from vqrl.grpo import parse
from vqrl.learning.check import parse_args
from vqrl.learning.grpo_run import grpo_flags


def _trl_args(argv: list[str]):
    cfg = parse_args(argv)
    args, _ = parse(grpo_flags(cfg, "standard", Path("/tmp/start"), Path("/tmp/data"), Path("/tmp/out"), seed=0))
    return cfg, args


def test_gpu_preset_turns_the_entropy_bonus_off_above_its_target():
    # the bonus alone pulls the template apart when a format break zeroes every advantage (docs/learning.md)
    cfg, args = _trl_args(["--gpu"])
    assert args.use_adaptive_entropy and args.entropy_target == pytest.approx(0.15)
    assert args.entropy_coef == args.entropy_coef_max == pytest.approx(0.02)
    assert (cfg.vision_hidden_size, cfg.vision_depth, cfg.prompts_per_step, cfg.data_seed) == (64, 4, 128, 3)
    assert args.per_device_train_batch_size == 128 * 4 and args.learning_rate == pytest.approx(1.4142e-3)


@pytest.mark.parametrize("argv", [["--quick"], ["--gpu", "--entropy_target", "0"]])
def test_a_constant_bonus_when_asked_or_on_the_quick_preset(argv):
    _, args = _trl_args(argv)
    assert not args.use_adaptive_entropy and args.entropy_coef == pytest.approx(0.02)


def test_grpo_arg_still_overrides_the_preset():
    _, args = _trl_args(["--gpu", "--grpo_arg", "entropy_target=0.3"])
    assert args.entropy_target == pytest.approx(0.3)


def test_perception_warmup_names_the_distortion_and_keeps_the_score_random():
    from vqrl.learning.warmup import RandomScoreSFT, perception_thought

    assert perception_thought({"distortion": "gaussian_blur", "severity": 3}) == "Distortion: gaussian blur, level 3."
    assert perception_thought({"distortion": None, "severity": None}) == "Distortion: none."

    class Builder:  # the two fields the targets read, for three records of one MOS
        records = [0, 1, 2]

        def row(self, i):
            return {"prompt": [{"role": "user", "content": [{"type": "text", "text": "q"}]}], "solution": 2.6,
                    "image_path": f"{i}.png", "distortion": ["darken", "brighten", None][i],
                    "severity": [2, 2, None][i]}

    rows = [RandomScoreSFT(Builder(), 60, seed=0, targets="perception")[i] for i in range(60)]
    texts = [r["completion"][0]["content"][0]["text"] for r in rows]
    thoughts = {t[len("<think>"):t.index("</think>")] for t in texts}
    assert thoughts == {"Distortion: darken, level 2.", "Distortion: brighten, level 2.", "Distortion: none."}
    scores = {t[t.index("Score: ") + 7:t.index("</answer>")] for t in texts}
    assert len(scores) > 30  # drawn at random, not the MOS (2.60 for every record here)


def test_perception_accuracy_counts_the_family_and_the_level_apart():
    from vqrl.learning.evaluate import perception_accuracy

    records = [{"distortion": "darken", "severity": 2}, {"distortion": "darken", "severity": 2},
               {"distortion": None, "severity": None}, {"distortion": "brighten", "severity": 4}]
    thoughts = ["Distortion: darken, level 2.", "Distortion: darken, level 5.", "Distortion: none.", None]
    assert perception_accuracy(records, thoughts) == {"think_names_distortion": 0.75, "think_names_level": 0.5}
    assert perception_accuracy(records, ["I look at the image."] * 4) == {"think_names_distortion": 0.0,
                                                                          "think_names_level": 0.0}
