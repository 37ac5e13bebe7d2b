"""Combining rewards on hand-made tensors: weighted sums, normalisation, RewardSet, ensembles,
win-rates, and the hacking monitors."""

import math

import pytest
import torch

from align.checkpoint import load_state, save_state
from rewards.combine import (
    RewardSet,
    RunningNormaliser,
    group_normalise,
    group_win_rate,
    pairwise_preferences,
    preference_win_rate,
    weighted_sum,
)
from rewards.ensemble import ensemble_values
from rewards.jpeg import jpeg_sizes_kb
from rewards.monitors import (
    batch_diversity,
    colour_entropy,
    edge_density,
    grid_energy,
    hacking_monitors,
    high_frequency_energy,
    saturation,
)
from rewards.tiny import tiny_dino

# --- pure functions -------------------------------------------------------------------------------


def test_weighted_sum_checks_names_against_weights():
    values = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([10.0, 20.0])}
    torch.testing.assert_close(weighted_sum(values, {"a": 2.0, "b": -0.5}), torch.tensor([-3.0, -6.0]))
    with pytest.raises(ValueError, match=r"no weight for \['b'\], weights for unknown \['c'\]"):
        weighted_sum(values, {"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="finite numbers, got {'b': nan}"):
        weighted_sum(values, {"a": 1.0, "b": math.nan})


def test_group_normalise_within_groups():
    values = torch.tensor([1.0, 3.0, 10.0, 10.0, 5.0, 0.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    # group 0: mean 2, std sqrt(2) -> -/+0.7071; group 1: no spread -> 0; group 2: alone -> 0;
    # group 3: mean 2, std 2 -> -1, 0, 1
    expected = torch.tensor([-0.70710, 0.70710, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0])
    torch.testing.assert_close(group_normalise(values, groups), expected, atol=1e-5, rtol=0)
    whole = group_normalise(values)  # no ids: the batch is one group
    torch.testing.assert_close(whole, (values - values.mean()) / (values.std() + 1e-6))
    with pytest.raises(ValueError, match=r"group_ids must have shape \[8\], got \[3\]"):
        group_normalise(values, groups[:3])


def test_running_normaliser_matches_the_statistics_of_everything_seen():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=generator) * 3 + 1 for n in (5, 1, 12)]
    normaliser = RunningNormaliser()
    for batch in batches:
        normaliser.update(batch)
    everything = torch.cat(batches).double()
    assert normaliser.count == 18
    assert normaliser.mean == pytest.approx(float(everything.mean()), abs=1e-12)
    assert normaliser.std == pytest.approx(float(everything.std()), abs=1e-12)
    torch.testing.assert_close(
        normaliser.normalise(torch.tensor([1.0])),
        torch.tensor([(1 - everything.mean()) / (everything.std() + 1e-6)]).float(),
    )
    fresh = RunningNormaliser()
    fresh.load_state_dict(normaliser.state_dict())
    assert fresh.state_dict() == normaliser.state_dict()
    assert RunningNormaliser().std == 1.0  # nothing seen yet: no scaling


def test_ensembles_mean_worst_and_uncertainty_weighted():
    values = torch.tensor([[1.0, 4.0, 0.0], [3.0, 4.0, 2.0], [2.0, 4.0, 7.0]])  # [K=3, B=3]
    torch.testing.assert_close(ensemble_values(values, "mean"), torch.tensor([2.0, 4.0, 3.0]))
    torch.testing.assert_close(ensemble_values(values, "worst"), torch.tensor([1.0, 4.0, 0.0]))
    std = torch.tensor([math.sqrt(2 / 3), 0.0, math.sqrt(26 / 3)])  # population std over members
    uncertain = ensemble_values(values, "uncertainty", penalty_weight=0.5)
    torch.testing.assert_close(uncertain, torch.tensor([2.0, 4.0, 3.0]) - 0.5 * std)
    variance = ensemble_values(values, "uncertainty", penalty_weight=0.5, penalty="var")
    torch.testing.assert_close(variance, torch.tensor([2.0, 4.0, 3.0]) - 0.5 * std**2)
    with pytest.raises(ValueError, match="mode must be one of mean, worst, uncertainty"):
        ensemble_values(values, "max")


def test_win_rates_from_a_reward_within_groups():
    values = torch.tensor([0.1, 0.5, 0.5, 0.9, 3.0, 1.0, 7.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    # group 0: 0.1 beats none; each 0.5 beats 0.1 and ties the other (1.5 of 3); 0.9 beats all
    expected = torch.tensor([0.0, 0.5, 0.5, 1.0, 1.0, 0.0, 0.5])
    torch.testing.assert_close(group_win_rate(values, groups), expected)
    soft = group_win_rate(values[:2], temperature=0.2)
    torch.testing.assert_close(soft, torch.sigmoid(torch.tensor([-2.0, 2.0])))
    preferences = pairwise_preferences(values, temperature=1.0)
    torch.testing.assert_close(preferences + preferences.T, torch.ones(7, 7))


def test_win_rates_from_a_pairwise_preference_model_ask_each_pair_once():
    images = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    groups = torch.tensor([0, 0, 0, 1, 1])
    asked = []

    def brighter(a, b, prompts):  # a Bradley-Terry preference model on mean brightness
        asked.append(len(a))
        return torch.sigmoid((a.mean((1, 2, 3)) - b.mean((1, 2, 3))) / 0.1)

    rates = preference_win_rate(brighter, images, ["p"] * 5, groups)
    assert asked == [3 + 1]  # 3 pairs in the first group, 1 in the second
    brightness = images.mean((1, 2, 3))
    torch.testing.assert_close(rates, group_win_rate(brightness, groups, temperature=0.1))
    with pytest.raises(ValueError, match=r"probabilities of shape \[4\] in \[0, 1\]"):
        preference_win_rate(lambda a, b, p: torch.full((len(a),), 2.0), images, ["p"] * 5, groups)


# --- RewardSet ------------------------------------------------------------------------------------

JPEG = [("jpeg-compressibility", 1.0, {}), ("jpeg-incompressibility", 0.5, {"quality": 50})]


def _images():
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((2, 3, 32, 32), 0.5)
    noise = torch.rand(2, 3, 32, 32, generator=generator)
    return torch.cat([flat, noise])


def test_reward_set_scores_raw_values_and_combines_them():
    rewards = RewardSet(JPEG, normalise="none")
    images = _images()
    values = rewards.score(images, [""] * 4)
    torch.testing.assert_close(values["jpeg-compressibility"], -jpeg_sizes_kb(images))
    torch.testing.assert_close(values["jpeg-incompressibility"], jpeg_sizes_kb(images, quality=50))
    expected = values["jpeg-compressibility"] + 0.5 * values["jpeg-incompressibility"]
    torch.testing.assert_close(rewards.combine(values), expected)
    assert rewards.names == ["jpeg-compressibility", "jpeg-incompressibility"]
    assert rewards.weights == {"jpeg-compressibility": 1.0, "jpeg-incompressibility": 0.5}
    assert not rewards.differentiable and rewards.trainable == {}
    with pytest.raises(
        ValueError, match=r"values for rewards \['jpeg-compressibility'\], but this RewardSet has"
    ):
        rewards.combine({"jpeg-compressibility": values["jpeg-compressibility"]})


def test_reward_set_group_normalisation_is_per_reward_then_weighted():
    rewards = RewardSet(JPEG, normalise="group")
    values = {"jpeg-compressibility": torch.tensor([1.0, 3.0, 5.0, 5.0]),
              "jpeg-incompressibility": torch.tensor([0.0, 4.0, 2.0, 6.0])}  # fmt: skip
    groups = torch.tensor([0, 0, 1, 1])
    s = math.sqrt(2)
    expected = torch.tensor([-1 / s, 1 / s, 0, 0]) + 0.5 * torch.tensor([-1 / s, 1 / s, -1 / s, 1 / s])
    torch.testing.assert_close(rewards.combine(values, groups), expected, atol=1e-5, rtol=0)


def test_reward_set_running_normalisation_and_its_state(tmp_path):
    rewards = RewardSet(JPEG, normalise="running")
    first = {
        "jpeg-compressibility": torch.tensor([1.0, 3.0]),
        "jpeg-incompressibility": torch.tensor([2.0, 2.0]),
    }
    second = {"jpeg-compressibility": torch.tensor([5.0]), "jpeg-incompressibility": torch.tensor([8.0])}
    rewards.observe(first)
    rewards.observe(second)
    combined = rewards.combine(second)
    assert float(rewards.combine(second)) == float(combined)  # combine only reads the statistics
    # after both batches: compressibility saw 1, 3, 5 (mean 3, std 2); incompressibility 2, 2, 8
    # (mean 4, std sqrt(12)); the second batch is standardised by those
    expected = (5 - 3) / (2 + 1e-6) + 0.5 * (8 - 4) / (math.sqrt(12) + 1e-6)
    assert float(combined) == pytest.approx(expected, rel=1e-6)
    save_state(tmp_path, {"rewards": rewards.state_dict()})
    restored = RewardSet(JPEG, normalise="running")
    restored.load_state_dict(load_state(tmp_path)["rewards"])
    torch.testing.assert_close(restored.combine(second), rewards.combine(second))
    with pytest.raises(ValueError, match="reward state is for rewards"):
        RewardSet(JPEG[:1], normalise="running").load_state_dict(rewards.state_dict())


@pytest.mark.parametrize(
    "terms, normalise, message",
    [
        ([("pickscor", 1.0, {})], "none", "unknown reward 'pickscor'; did you mean 'pickscore'"),
        ([("ocr", math.inf, {})], "none", "reward weights must be finite numbers, got {'ocr': inf}"),
        ([("ocr", "high", {})], "none", "reward weights must be finite numbers"),
        ([("ocr", 1.0, {}), ("ocr", 2.0, {})], "none", "reward 'ocr' is listed twice"),
        ([("ocr", 1.0)], "none", "each reward term is \\(name, weight, args dict\\)"),
        ([], "none", "at least one"),
        ([("ocr", 1.0, {})], "zscore", "normalise must be one of none, group, running"),
    ],
)
def test_reward_set_construction_fails_early_with_one_message(terms, normalise, message):
    with pytest.raises(ValueError, match=message):
        RewardSet(terms, normalise=normalise)


def test_reward_set_with_a_trainable_and_differentiable_reward(tmp_path):
    directory = tiny_dino(tmp_path / "dino")
    terms = [("discriminator", 1.0, {"model": directory, "hidden": 8}), ("jpeg-compressibility", 0.0, {})]
    rewards = RewardSet(terms, normalise="group")
    assert list(rewards.trainable) == ["discriminator"] and not rewards.differentiable
    assert RewardSet(terms[:1]).differentiable
    images = _images()
    stats = rewards.trainable["discriminator"].update(images[:2], images[2:])
    assert set(stats) == {"loss", "real_logit", "fake_logit", "accuracy"}
    save_state(tmp_path, {"rewards": rewards.state_dict()})
    restored = RewardSet(terms, normalise="group")
    restored.load_state_dict(load_state(tmp_path)["rewards"])
    torch.testing.assert_close(restored.score(images, [""] * 4), rewards.score(images, [""] * 4))


def test_ensemble_reward_combines_its_members():
    from rewards.base import build_reward

    members = [
        {"name": "jpeg-compressibility"},
        {"name": "jpeg-incompressibility", "scale": -2.0, "shift": 1.0},
    ]
    worst = build_reward("ensemble", members=members, mode="worst")
    images = _images()
    sizes = jpeg_sizes_kb(images)
    torch.testing.assert_close(worst(images, [""] * 4), torch.minimum(-sizes, -2 * sizes + 1))
    assert not worst.differentiable
    with pytest.raises(ValueError, match="expected {name, args, scale, shift}"):
        build_reward("ensemble", members=[{"name": "ocr", "weight": 2}])
    with pytest.raises(ValueError, match="ensemble needs members"):
        build_reward("ensemble")


# --- monitors -------------------------------------------------------------------------------------


def test_monitors_on_hand_made_images():
    flat = torch.full((2, 3, 64, 64), 0.5)
    red = torch.zeros(2, 3, 64, 64)
    red[:, 0] = 1.0
    halves = flat.clone()
    halves[..., 32:] = 1.0  # one vertical edge
    grid = flat.clone()
    grid[..., ::8, :] = 0.0
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 3, 64, 64, generator=generator)
    assert saturation(flat) == 0.0 and saturation(red) == 1.0
    assert colour_entropy(flat) == 0.0 and colour_entropy(halves) == pytest.approx(1.0)
    assert colour_entropy(noise) == pytest.approx(9.0, abs=0.1)  # 512 cells, nearly uniform
    assert edge_density(flat) == 0.0 and edge_density(halves) == pytest.approx(2 / 64)
    assert high_frequency_energy(flat) == 0.0
    assert high_frequency_energy(noise) == pytest.approx(1 - math.pi / 16, abs=0.02)
    assert grid_energy(grid) == pytest.approx(1.0) and grid_energy(noise) == pytest.approx(14 / 64, abs=0.02)
    assert batch_diversity(flat) == 0.0 and batch_diversity(torch.cat([flat[:1], red[:1]])) > 0.4
    assert batch_diversity(flat[:1]) == 0.0
    assert batch_diversity(flat, features=torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)
    monitors = hacking_monitors(noise)
    assert set(monitors) == {
        "saturation",
        "colour_entropy",
        "edge_density",
        "high_frequency",
        "grid_energy",
        "diversity",
    }
    assert all(isinstance(v, float) for v in monitors.values())
