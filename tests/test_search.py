"""Inference-time search: the budget arithmetic, exact reductions to best-of-N, and improvement."""

import math

import pytest
import torch
from conftest import tiny_adapter
from pattern_reward import Pattern

from align.optimize import OptimizeSettings, best_of_n
from align.search import (
    SearchSettings,
    guided_sample,
    prune_plan,
    pruned_search,
    tree_search,
)
from samplers.rollout import predicted_clean

PROMPTS, SEEDS = ["a red circle", "two blue squares", "a green triangle"], [0, 1, 2]


def test_prune_plan_spends_at_most_the_budget_and_starts_as_many_as_it_can():
    assert prune_plan(10, (), 0.25, 40) == [4]  # no pruning: best-of-4
    plan = prune_plan(10, (2,), 0.25, 80)  # n * 2 + ceil(n / 4) * 8 <= 80
    assert plan == [20, 5] and 20 * 2 + 5 * 8 == 80
    assert 21 * 2 + 6 * 8 > 80
    plan = prune_plan(20, (4, 10), 0.5, 420)
    cost = plan[0] * 4 + plan[1] * 6 + plan[2] * 10
    assert cost <= 420 and plan[1] == math.ceil(plan[0] / 2) and plan[2] == math.ceil(plan[1] / 2)


def test_clean_prediction_inverts_the_forward_process_of_both_families():
    flow = tiny_adapter("tiny:sd3")
    x0, noise, sigma = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.9])
    x = flow.add_noise(x0, noise, sigma)
    assert torch.allclose(predicted_clean(flow, noise - x0, x, sigma), x0, atol=1e-5)
    unet = tiny_adapter("tiny:sd15")
    x = unet.add_noise(x0, noise, sigma)
    assert torch.allclose(predicted_clean(unet, noise, x, sigma), x0, atol=1e-4)


def test_a_tree_without_stochastic_steps_is_best_of_n_exactly():
    adapter = tiny_adapter("tiny:sd3")
    rewards = {"pattern": Pattern()}
    settings = SearchSettings(budget=5 * 4, num_steps=4, window=0)
    tree = tree_search(adapter, PROMPTS, SEEDS, rewards, settings)
    baseline = best_of_n(adapter, PROMPTS, SEEDS, rewards, OptimizeSettings(num_steps=4), 5)
    assert tree["leaves"] == [5, 5, 5] and tree["evaluations"] == [20, 20, 20]
    assert torch.allclose(tree["reward"], baseline["reward"].float(), atol=1e-5)
    assert torch.allclose(tree["images"], baseline["images"], atol=1e-5)


def test_pruning_that_keeps_everything_is_best_of_n_exactly():
    adapter = tiny_adapter("tiny:sd3")
    rewards = {"pattern": Pattern()}
    settings = SearchSettings(budget=6 * 4, num_steps=4, prune_at=(2,), keep=1.0)
    pruned = pruned_search(adapter, PROMPTS, SEEDS, rewards, settings)
    baseline = best_of_n(adapter, PROMPTS, SEEDS, rewards, OptimizeSettings(num_steps=4), 6)
    assert pruned["plan"] == [6, 6] and pruned["evaluations"] == [24, 24, 24]
    assert torch.allclose(pruned["reward"], baseline["reward"].float(), atol=1e-4)


@pytest.mark.parametrize("selection", ["greedy", "sample"])
def test_tree_stays_in_budget_shares_prefixes_and_keeps_its_best_leaf(selection):
    adapter = tiny_adapter("tiny:sd3")
    rewards = {"pattern": Pattern()}
    settings = SearchSettings(budget=8 * 6, num_steps=6, window=3, selection=selection)
    tree = tree_search(adapter, PROMPTS, SEEDS, rewards, settings)
    assert all(e <= 48 for e in tree["evaluations"])
    assert all(leaves > 8 for leaves in tree["leaves"])  # shared prefixes buy more images than best-of-8
    rescored = Pattern()(tree["images"], PROMPTS)
    assert torch.allclose(rescored, tree["reward"].float(), atol=1e-4)  # the image kept is the best scored
    first = Pattern()(adapter.generate(PROMPTS, SEEDS, num_steps=6), PROMPTS)
    assert (tree["reward"] >= first - 2.0).all()  # the first branch starts from the base noise


def test_pruning_spends_the_budget_on_more_starts_and_never_loses_the_kept_best():
    adapter = tiny_adapter("tiny:sd3")
    rewards = {"pattern": Pattern()}
    settings = SearchSettings(budget=4 * 4, num_steps=4, prune_at=(1,), keep=0.25)
    pruned = pruned_search(adapter, PROMPTS, SEEDS, rewards, settings)
    assert pruned["plan"] == [8, 2] and all(e <= 16 for e in pruned["evaluations"])
    assert torch.allclose(Pattern()(pruned["images"], PROMPTS), pruned["reward"].float(), atol=1e-4)


def test_guidance_zero_is_the_plain_sde_and_guidance_raises_the_reward():
    adapter = tiny_adapter("tiny:sd3")
    rewards = {"pattern": Pattern()}
    settings = SearchSettings(num_steps=6, window=6, noise_level=0.7)
    plain = guided_sample(adapter, PROMPTS, SEEDS, rewards, settings, scale=0.0)
    again = guided_sample(adapter, PROMPTS, SEEDS, rewards, settings, scale=0.0)
    assert torch.equal(plain["images"], again["images"])  # seeded: the same SDE noise
    guided = guided_sample(adapter, PROMPTS, SEEDS, rewards, settings, scale=1.0)
    assert (guided["reward"] > plain["reward"]).all(), (plain["reward"], guided["reward"])


def test_the_cli_searches_with_a_black_box_reward_and_refuses_one_for_guidance(tmp_path, capsys):
    import json

    from align.cli import main

    common = ["optimize", "toy", "--prompt", "a red circle", "--prompt", "two blue squares", "--seeds", "2"]
    common += ["--reward", "geneval-toy", "--steps", "4", "--budget", "16"]
    assert main([*common, "--method", "prune", "--prune-at", "1", "--out", str(tmp_path / "p")]) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["settings"]["plan"] == [8, 2] and summary["settings"]["best_of_n"] == 4
    assert summary["settings"]["evaluations"] == [14, 14, 14, 14]  # 8 x 1 + 2 x 3 per image
    assert summary["prune"]["num_images"] == 4 and "accuracy" in summary["prune"]["vs_baseline"]
    assert sorted(p.name for p in (tmp_path / "p" / "images" / "prune").iterdir())[:2] == [
        "000_0.png",
        "001_1.png",
    ]
    assert "(prune - best_of_n, paired)" in capsys.readouterr().out
    assert main([*common, "--method", "guidance", "--out", str(tmp_path / "g")]) == 2
    assert "geneval-toy is not differentiable" in capsys.readouterr().err


def test_a_recipe_sets_the_search_method_and_its_settings_and_the_command_line_wins(tmp_path, capsys):
    import json

    from align.cli import main

    recipe = tmp_path / "prune.yaml"
    recipe.write_text(
        "model: toy\nmethod: prune\nrewards: {geneval-toy: 1.0}\neval_rewards: [clip-toy]\nsteps: 4\n"
        "seeds: 2\nbudget: 16\nprune_at: [1]\nkeep: 0.25\n"
    )
    prompts = ["--prompt", "a red circle", "--prompt", "two blue squares"]
    assert main(["optimize", "--config", str(recipe), *prompts, "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    # the same plan as the command-line test above: 8 starts, 2 kept after step 1, best-of-4 baseline
    assert summary["settings"]["plan"] == [8, 2] and summary["settings"]["evaluations"] == [14] * 4
    assert summary["prune"]["num_images"] == 4 and "clip-toy" in summary["prune"]["rewards"]
    # a flag on the command line overrides the recipe's value: keeping half, 6 starts x 1 step + 3 x 3
    argv = ["optimize", "--config", str(recipe), *prompts, "--keep", "0.5", "--out", str(tmp_path / "k")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "k" / "summary.json").read_text())["settings"]["plan"] == [6, 3]
    recipe.write_text("model: toy\nmethod: beam\nrewards: {geneval-toy: 1.0}\n")
    assert main(["optimize", "--config", str(recipe), *prompts, "--out", str(tmp_path / "b")]) == 2
    assert "method: 'beam' is not one of reno, tree, prune, guidance" in capsys.readouterr().err


def test_a_window_over_every_step_leaves_no_ode_to_finish_and_keeps_its_best_image():
    adapter = tiny_adapter("tiny:sd3")
    settings = SearchSettings(budget=4 * 4, num_steps=4, window=4)
    tree = tree_search(adapter, PROMPTS, SEEDS, {"pattern": Pattern()}, settings)
    assert all(e <= 16 for e in tree["evaluations"]) and all(n >= 4 for n in tree["leaves"])
    assert torch.allclose(Pattern()(tree["images"], PROMPTS), tree["reward"].float(), atol=1e-4)


def test_tree_charges_each_leaf_its_exact_cost_and_stops_only_when_the_next_does_not_fit(monkeypatch):
    import align.search as search

    charged: dict[int, list[int]] = {}
    real = search._Tree.cost

    def spy(tree, node):
        cost = real(tree, node)
        charged.setdefault(id(tree), []).append(cost)
        return cost

    monkeypatch.setattr(search._Tree, "cost", spy)
    adapter = tiny_adapter("tiny:sd3")
    budget = 8 * 6
    settings = SearchSettings(budget=budget, num_steps=6, window=5)
    tree = tree_search(adapter, PROMPTS, SEEDS, {"pattern": Pattern()}, settings)
    for costs, used, leaves in zip(charged.values(), tree["evaluations"], tree["leaves"], strict=True):
        assert len(costs) == leaves + 1 and sum(costs[:-1]) == used  # the counter agrees with the charges
        assert used + costs[-1] > budget >= used  # the last branch chosen did not fit
        assert min(costs) < 6  # deep branches reuse their prefix: cheaper than a fresh sample
    assert all(n > 8 for n in tree["leaves"])  # more images than best-of-8


def test_search_samples_with_cps_when_asked_and_refuses_it_for_a_unet(tmp_path, capsys):
    from align.cli import main

    common = ["optimize", "toy", "--method", "tree", "--reward", "geneval-toy", "--prompt", "a red circle"]
    common += ["--steps", "4", "--budget", "16", "--window", "2", "--seeds", "2"]
    assert main([*common, "--out", str(tmp_path / "sde")]) == 0
    assert main([*common, "--sde", "cps", "--out", str(tmp_path / "cps")]) == 0
    trees = [sorted((tmp_path / n / "images" / "tree").iterdir()) for n in ("sde", "cps")]
    base = [sorted((tmp_path / n / "images" / "base").iterdir()) for n in ("sde", "cps")]
    assert [p.read_bytes() for p in base[0]] == [p.read_bytes() for p in base[1]]  # the ODE: no SDE step
    assert [p.read_bytes() for p in trees[0]] != [p.read_bytes() for p in trees[1]]  # the window's steps differ
    unet = ["optimize", "tiny:sd15", "--method", "tree", "--sde", "cps", "--reward", "jpeg-compressibility"]
    unet += ["--prompt", "a cat"]
    assert main([*unet, "--out", str(tmp_path / "u")]) == 2
    assert "--sde cps steps flow models" in capsys.readouterr().err
