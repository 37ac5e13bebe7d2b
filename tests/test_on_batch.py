"""benchmarks/on_batch.py: re-sampling an epoch's prompts at its seeds reproduces its rewards exactly
(what the check's paired change rests on), a step on the batch moves them, and the reward read is the
recipe's weighted one."""

import importlib.util
from pathlib import Path

import torch

from align.config import load_config

ROOT = Path(__file__).parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("on_batch", ROOT / "benchmarks" / "on_batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resampling_reproduces_and_a_step_moves_the_rewards():
    on_batch = load_benchmark().on_batch
    config = load_config(ROOT / "configs/tiny/flow-grpo.yaml")
    still = on_batch(config, passes=0)
    assert still["steps"] == 0
    for before, after in (still["trained"], still["next"]):
        assert before.shape == (8,) and torch.equal(before, after)
    assert not torch.equal(still["next"][0], still["trained"][0])  # two batches, two sets of samples
    moved = on_batch(config, passes=1, negate=True)
    assert moved["steps"] == config.train.steps_per_pass == 1  # one pass: one optimiser step
    before, after = moved["trained"]
    assert torch.equal(before, still["trained"][0])  # the same batch as before the step
    assert float((after - before).abs().max()) > 0  # lr 0.01 moves the samples' rewards
    assert torch.equal(moved["advantages"], -still["advantages"])  # --negate flipped them
    doubled = on_batch(load_config(ROOT / "configs/tiny/flow-grpo.yaml", ["rewards.terms.0.weight=2.0"]), passes=0)
    assert torch.allclose(doubled["trained"][0], 2 * still["trained"][0])  # the recipe's weighted reward
