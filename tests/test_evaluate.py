"""Evaluation statistics and the relation swap test."""

import math
from pathlib import Path

import pytest
import torch

from align.evaluate import paired_difference, swapped_prompt
from rewards.scoring import standard_error

ROOT = Path(__file__).resolve().parents[1]


def test_standard_error_and_paired_difference_by_hand():
    assert standard_error([1, 0, 1, 0]) == pytest.approx(math.sqrt(1 / 3) / 2)  # std (ddof 1) / sqrt(n)
    assert math.isnan(standard_error([1]))
    base = {"outcomes": [0, 0, 1, 1, 0, 1]}
    aligned = {"outcomes": [1, 0, 1, 1, 1, 1]}
    delta, se = paired_difference(base, aligned)
    # differences [1, 0, 0, 0, 1, 0]: mean 1/3, std (ddof 1) sqrt(4/15), / sqrt(6)
    assert delta == pytest.approx(1 / 3) and se == pytest.approx(math.sqrt(4 / 15) / math.sqrt(6))
    with pytest.raises(ValueError, match="same grid"):
        paired_difference(base, {"outcomes": [1]})


def test_swapped_prompt_flips_only_the_relation():
    assert swapped_prompt("a red circle left of a blue square") == "a red circle right of a blue square"
    assert (
        swapped_prompt("an orange triangle below a green circle") == "an orange triangle above a green circle"
    )
    with pytest.raises(ValueError, match="no relation"):
        swapped_prompt("two red circles")


def test_shipped_model_listens_to_the_relation_word():
    """The swap test on held-out relations: the shipped base must flip the placement when the relation
    word is swapped (the model shipped before this test flipped 1 pair in 96)."""
    from align.evaluate import swap_test
    from align.recipes import load_prompts
    from rewards.toy_world import parse_prompt
    from samplers.models import load_adapter

    relations = [p for p in load_prompts("heldout") if parse_prompt(p).relation][::4]  # 12 prompts
    with torch.no_grad():
        result = swap_test(load_adapter("toy"), relations, seeds=4)
    # shipped: 0.708 of 48 pairs flip, every one of the 34 whose two objects are drawn in both images
    assert result["pairs"] == 48 and result["detected"] >= 30
    assert result["flip_fraction"] >= SWAP_FLOOR and result["flip_fraction_detected"] >= 0.9, result
    assert result["pixel_difference"] > 0.5 * result["seed_difference"]  # swapped images really differ


SWAP_FLOOR = 0.6


def test_demo_reuses_the_base_evaluation_only_where_it_measures_the_same_thing():
    from align.config import load_config
    from align.demo import _same_evaluation

    grpo = load_config(ROOT / "configs/toy/grpo-demo.yaml")
    draft = load_config(ROOT / "configs/toy/draft-clip.yaml")
    base = {"rewards": {"geneval-toy": 0.7, "clip-toy": 0.8, "aesthetic-toy": 0.8}}
    assert _same_evaluation(grpo, draft, base)  # the shipped demo evaluates its base model once
    nft = load_config(ROOT / "configs/toy/diffusion-nft-demo.yaml")
    assert _same_evaluation(nft, grpo, base) and _same_evaluation(nft, draft, base)  # the demo's three runs
    assert not _same_evaluation(grpo, draft, {"rewards": {"geneval-toy": 0.7, "clip-toy": 0.8}})
    fewer_seeds = load_config(ROOT / "configs/toy/draft-clip.yaml", ["eval.seeds=2"])
    assert not _same_evaluation(grpo, fewer_seeds, base)
    other_steps = load_config(ROOT / "configs/toy/draft-clip.yaml", ["sampling.eval_num_steps=10"])
    assert not _same_evaluation(grpo, other_steps, base)
