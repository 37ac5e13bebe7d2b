"""Every registered algorithm has a tiny recipe (configs/tiny/), and one epoch of it on the CPU lowers
that algorithm's own loss on the batch it trained on: the loss of the epoch's first micro-batch, scored
again after the epoch's optimiser steps on the same collected batch, is below what it was before."""

import copy
from pathlib import Path

import pytest
import torch

from align.algorithms.base import ALGORITHMS
from align.config import load_config
from align.loop import Run, plan_epoch

TINY = Path(__file__).parents[1] / "configs" / "tiny"
RECIPES = sorted(TINY.glob("*.yaml"))


def test_every_registered_algorithm_has_a_tiny_recipe():
    named = {load_config(path).algorithm.name for path in RECIPES}
    assert set(ALGORITHMS.load()) <= named, sorted(set(ALGORITHMS) - named)


def overrides_for(path: Path, tmp_path: Path) -> list[str]:
    """Inputs a recipe names by path that a test builds: a pairs file, a tiny DINO."""
    config = load_config(path)
    if config.algorithm.name in ("flow-dpo", "diffusion-dpo"):
        from test_dpo import make_pairs

        return [f"algorithm.pairs={make_pairs(tmp_path / 'pairs', config.model.name)}"]
    if config.algorithm.name == "adv-grpo":
        from rewards.tiny import tiny_dino

        return [f"rewards.terms.0.args.model={tiny_dino(tmp_path / 'dino')}"]
    return []


def first_loss(run: Run, batch: dict, unit) -> float:
    with torch.no_grad():
        loss, _ = run.algorithm.loss(copy.deepcopy(batch), unit)  # a copy: a loss may draw from the batch
    return float(loss)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_one_epoch_lowers_the_algorithms_loss_on_its_batch(path, tmp_path):
    config = load_config(path, overrides_for(path, tmp_path))
    run = Run(config, tmp_path / "run")
    kept = run.algorithm.state_dict()
    plan = plan_epoch(run.prompts, config, 0, 0, 1)
    batch = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)  # what epoch 0 collects
    run.algorithm.load_state_dict(kept)  # epoch 0 collects it again, from the same state
    unit = run.algorithm.micro_batches(batch, torch.Generator().manual_seed(config.train.seed * 104_729))[0]
    before = first_loss(run, batch, unit)
    trainable = {n: p.detach().clone() for n, p in run.policy.named_parameters().items()}
    record = run.train_epoch()
    after = first_loss(run, batch, unit)
    assert record["epoch"] == 1 and record["skipped_steps"] == 0
    assert any(not torch.equal(trainable[n], p) for n, p in run.policy.named_parameters().items())
    assert after < before, (before, after)
