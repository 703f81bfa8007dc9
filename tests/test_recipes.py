"""Every shipped recipe trains 2 steps on the tiny model, with only the model (and sizes) overridden."""

from __future__ import annotations

import glob
import os

import pytest

from trainer_utils import EXAMPLES
from vqrl.grpo import build_trainer, parse

ROOT = os.path.dirname(EXAMPLES)
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "*.yaml")))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.basename(r) for r in RECIPES])
def test_recipe_runs_two_steps(recipe, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name data relative to the repository, as finetune_RL.sh runs them
    args, model_args = parse(["--config", recipe, "--model_name_or_path", tiny_model_dir, "--output_dir",
                              str(tmp_path), "--max_steps", "2", "--max_completion_length", "16", "--use_cpu", "true",
                              "--report_to", "none", "--save_strategy", "no"])
    trainer = build_trainer(args, model_args)
    trainer.train()
    assert trainer.state.global_step == 2
    assert any("reward" in row for row in trainer.state.log_history)


def test_every_recipe_names_known_rewards_and_trainer():
    import yaml

    from vqrl.rewards import REWARDS
    from vqrl.trainers import TRAINERS

    assert len(RECIPES) >= 4
    for recipe in RECIPES:
        cfg = yaml.safe_load(open(recipe))
        assert cfg["trainer"] in TRAINERS, recipe
        assert set(cfg["reward_funcs"]) <= set(REWARDS), recipe
        for f in cfg["data_files"]:
            assert os.path.exists(os.path.join(ROOT, f)), f
