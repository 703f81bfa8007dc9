"""The learning check's presets become the GRPO flags they say (vqrl.learning.check / grpo_run.grpo_flags), parsed by
vqrl.grpo as a run parses them."""

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
