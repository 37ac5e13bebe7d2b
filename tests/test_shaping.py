"""Reward shaping: PAR's bounded centred reward, the unlikeliness bonus, Lagrange constraints."""

import math

import pytest
import torch

from align.shaping import (
    Constraint,
    Constraints,
    calibrate_noise,
    dense_step_advantages,
    par_shape,
    pareto_front,
    pareto_rank_signal,
    pareto_ranks,
    unlikeliness_bonus,
)


def test_par_is_a_half_at_the_reference_and_saturates_beyond_it():
    reference = torch.tensor([0.5, 0.5, 0.5, 0.5])
    shaped = par_shape(torch.tensor([0.5, 0.6, 2.0, 10.0]), reference, temperature=0.1)
    assert shaped[0] == pytest.approx(0.5)
    assert shaped[1] == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-6)
    assert shaped[3] - shaped[2] < 1e-6  # far past the reference: no more gain
    with pytest.raises(ValueError, match="temperature"):
        par_shape(shaped, reference, temperature=0.0)


def test_unlikeliness_lowers_likely_successes_by_rank_and_leaves_failures():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.2])
    likelihood = torch.tensor([-1.0, -3.0, -2.0, 5.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    shaped = unlikeliness_bonus(rewards, likelihood, groups, beta=0.3, success=1.0)
    # group 0: three successes, likeliest first: index 0 (rank 0), 2 (rank 1), 1 (rank 2)
    assert shaped[0] == pytest.approx(1 - 0.3 * 2 / 3)
    assert shaped[2] == pytest.approx(1 - 0.3 * 1 / 3)
    assert shaped[1] == pytest.approx(1.0) and shaped[3] == 0.0
    assert shaped[4] == 1.0 and shaped[5] == pytest.approx(0.2)  # a lone success is not ranked


def test_multipliers_grow_while_a_constraint_is_broken_and_the_shaped_reward_pays_for_it():
    constraints = Constraints([Constraint("proxy", at_most=0.8), Constraint("gold", at_least=0.5)], lr=1.0)
    values = {"proxy": torch.tensor([0.9, 1.0]), "gold": torch.tensor([0.6, 0.6])}
    assert constraints.update(values) == pytest.approx({"proxy": 0.15, "gold": 0.0})
    constraints.update(values)
    assert constraints.multipliers["proxy"] == pytest.approx(0.3)
    shaped = constraints.shape(torch.tensor([1.0, 1.0]), values)
    assert torch.allclose(shaped, torch.tensor([1.0 - 0.3 * 0.1, 1.0 - 0.3 * 0.2]))
    satisfied = {"proxy": torch.tensor([0.1, 0.1]), "gold": torch.tensor([0.9, 0.9])}
    for _ in range(10):
        constraints.update(satisfied)
    assert constraints.multipliers == {"proxy": 0.0, "gold": 0.0}  # projected: never below 0
    restored = Constraints([Constraint("proxy", at_most=0.8), Constraint("gold", at_least=0.5)])
    restored.load_state_dict({"multipliers": {"proxy": 0.7}})
    assert restored.multipliers == {"proxy": 0.7, "gold": 0.0}


def test_a_cap_on_a_maximised_reward_stops_its_push_but_never_reverses_it():
    constraints = Constraints(
        [Constraint("proxy", at_most=0.8), Constraint("gold", at_least=0.5)],
        lr=10.0,
        ceilings={"proxy": 0.5, "gold": 0.1},  # a floor is never bounded
    )
    values = {"proxy": torch.tensor([0.9, 1.0]), "gold": torch.tensor([0.3, 0.4])}
    assert constraints.update(values) == pytest.approx({"proxy": 0.5, "gold": 1.5})
    assert constraints.update(values) == pytest.approx({"proxy": 0.5, "gold": 3.0})
    combined = 0.5 * values["proxy"]  # the proxy maximised with weight 0.5
    shaped = constraints.shape(combined, {"proxy": values["proxy"], "gold": torch.zeros(2)})
    # net weight of the proxy 0.5 - 0.5 = 0: the shaped reward no longer moves with it
    assert shaped[1] - shaped[0] == pytest.approx(0.0)
    restored = Constraints([Constraint("proxy", at_most=0.8)], ceilings={"proxy": 0.5})
    restored.load_state_dict(constraints.state_dict())
    assert restored.multipliers["proxy"] == 0.5


def test_constraint_mistakes_are_named():
    with pytest.raises(ValueError, match="exactly one of at_most or at_least"):
        Constraint("proxy")
    with pytest.raises(ValueError, match="no reward term of that name"):
        Constraints([Constraint("missing", at_most=1.0)]).shape(torch.zeros(2), {"proxy": torch.zeros(2)})


def test_pareto_front_within_groups_keeps_each_groups_own_front():
    values = torch.tensor([[0.9, 0.9], [0.1, 0.2], [0.2, 0.1], [0.5, 0.5], [0.4, 0.6], [0.3, 0.3]])
    groups = torch.tensor([0, 1, 1, 0, 1, 1])
    assert pareto_front(values).tolist() == [True, False, False, False, False, False]  # one sample dominates
    # in group 1 nothing is beaten by (0.9, 0.9): (0.4, 0.6) dominates the others
    assert pareto_front(values, groups).tolist() == [True, False, False, False, True, False]
    groups = torch.tensor([0, 1, 1, 2, 2, 3])
    assert pareto_front(values, groups).tolist() == [True, True, True, True, True, True]


def test_pareto_ranks_peel_fronts_by_hand():
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [1.0, 0.0], [0.0, 0.0]])
    # the three trade-offs (and the duplicate of the first) are the front; (0.4, 0.4) is dominated
    # only by (0.5, 0.5); (0, 0) by everything
    assert pareto_ranks(values).tolist() == [0, 0, 0, 1, 0, 2]


def test_dense_advantages_credit_the_step_whose_prediction_improved():
    # two groups of two; three trained steps; the first sample of group 0 gains at step 1
    step_rewards = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.4, 0.4, 0.4], [0.2, 0.2, 0.2, 0.6]]
    )
    advantages = dense_step_advantages(step_rewards, torch.tensor([0, 0, 1, 1]), eps=0.0)
    gain_std = math.sqrt(
        0.5
    )  # two gains 1 and 0 (or 0.2 and 0 scaled): unbiased std of {x, 0} is x / sqrt(2)
    assert advantages[0].tolist() == pytest.approx([0.0, 0.5 / gain_std, 0.0])
    assert advantages[1].tolist() == pytest.approx([0.0, -0.5 / gain_std, 0.0])
    assert advantages[2].tolist() == pytest.approx([0.5 / gain_std, 0.0, -0.5 / gain_std], rel=1e-5)
    assert (advantages.sum(0).abs() < 1e-5).all()  # zero-mean per group and step


def test_dense_to_go_credit_is_the_final_reward_minus_the_estimate_before_the_step():
    step_rewards = torch.tensor([[0.0, 0.5, 0.5, 1.0], [0.2, 0.2, 0.6, 0.4], [0.3, 0.3, 0.3, 0.3]])
    one_group = torch.tensor([0, 0, 0])
    raw = dense_step_advantages(
        step_rewards, one_group, eps=0.0, std_over="batch", centre=False, credit="to_go"
    )
    to_go = step_rewards[:, -1:] - step_rewards[:, :-1]  # [[1, .5, .5], [.2, .2, -.2], [0, 0, 0]]
    assert torch.allclose(raw, to_go / to_go.std())
    # one batch-wide std keeps the steps' relative sizes: the third sample, which no step moved, gets 0
    assert raw[2].abs().max() == 0
    assert float(raw[0, 0] / raw[0, 1]) == pytest.approx(2.0)
    # centred per group and step, then divided by one std of every centred value
    centred = to_go - to_go.mean(0, keepdim=True)
    batch = dense_step_advantages(step_rewards, one_group, eps=0.0, std_over="batch", credit="to_go")
    assert torch.allclose(batch, centred / centred.std())
    # not centred, each step's group std: the std is still taken about the step's group mean
    per_step = dense_step_advantages(step_rewards, one_group, eps=0.0, centre=False, credit="to_go")
    assert torch.allclose(per_step, to_go / to_go.std(0, keepdim=True))
    # "gain" credit with the same options: the step's own gain only
    gains = step_rewards[:, 1:] - step_rewards[:, :-1]
    own = dense_step_advantages(step_rewards, one_group, eps=0.0, std_over="batch", centre=False)
    assert torch.allclose(own, gains / gains.std())


def _collected(recipe: str, tmp_path, overrides=()):
    from pathlib import Path

    from align.config import load_config
    from align.loop import Run, plan_epoch

    path = Path(__file__).parents[1] / "configs" / "tiny" / recipe
    config = load_config(path, list(overrides))
    run = Run(config, tmp_path / "run")
    plan = plan_epoch(run.prompts, config, 0, 0, 1)
    return run, plan, run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)


def test_dense_grpo_gives_each_window_step_its_own_zero_mean_advantage(tmp_path):
    run, plan, batch = _collected("dense-grpo.yaml", tmp_path)
    advantages, window = batch.advantages, batch.stats["noise_window"]
    assert advantages.shape == (8, 4) and len(window) == 2
    off = [i for i in range(4) if i not in window]
    assert (advantages[:, off] == 0).all() and advantages[:, window].abs().sum() > 0
    for group in plan.group_ids.unique():
        assert advantages[plan.group_ids == group].sum(0).abs().max() < 1e-4
    assert set(batch.steps.flatten().tolist()) <= set(window)


def test_dense_mix_blends_the_trajectory_advantage_into_every_window_step(tmp_path):
    from align.algorithms.dense import step_rewards
    from align.losses import group_advantages

    run, plan, batch = _collected("dense-grpo.yaml", tmp_path, ["algorithm.dense.mix=0.25"])
    window = batch.stats["noise_window"]
    dense = step_rewards(run.context, batch.trajectory, batch.values, window)
    per_step = dense_step_advantages(dense, plan.group_ids)
    combined = run.context.rewards.combine(batch.values)
    trajectory, _ = group_advantages(combined, plan.group_ids)
    expected = 0.75 * per_step + 0.25 * trajectory[:, None]
    assert torch.allclose(batch.advantages[:, window], expected, atol=1e-5)
    off = [i for i in range(batch.advantages.shape[1]) if i not in window]
    assert (batch.advantages[:, off] == 0).all()


def test_shaping_fills_par_references_moves_the_multiplier_and_keeps_them_in_state(tmp_path):
    run, plan, batch = _collected("shaped-grpo.yaml", tmp_path)
    algorithm = run.algorithm
    assert set(algorithm.reference_rewards) == set(plan.prompts)
    assert algorithm.constraints.multipliers["jpeg-incompressibility"] > 0  # at_most -1: always broken
    assert 0 < batch.stats["pareto_front_fraction"] <= 1
    state = algorithm.state_dict()
    algorithm.reference_rewards, algorithm.constraints.multipliers = {}, {"jpeg-incompressibility": 0.0}
    algorithm.load_state_dict(state)
    assert algorithm.constraints.multipliers["jpeg-incompressibility"] > 0 and algorithm.reference_rewards


def test_a_constraint_on_an_unscored_reward_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a reward term"):
        _collected(
            "shaped-grpo.yaml", tmp_path, ["algorithm.shaping.constraints=[{name: aesthetic, at_most: 1.0}]"]
        )


def test_dense_ode_estimate_from_the_initial_noise_is_the_plain_ode_samples_reward(tmp_path):
    from align.algorithms.dense import step_rewards
    from samplers.noise import generators_from_seeds

    run, plan, batch = _collected("dense-grpo.yaml", tmp_path, ["algorithm.window.starts=[0, 1]"])
    window = batch.stats["noise_window"]
    assert window[0] == 0
    rewards = step_rewards(run.context, batch.trajectory, batch.values, window)
    adapter, rewards_set = run.context.adapter, run.context.rewards
    with torch.no_grad():
        ode = adapter.sample(plan.prompts, generators_from_seeds(plan.seeds), num_steps=4)
        expected = rewards_set.combine(rewards_set.score(adapter.decode(ode.final).float(), plan.prompts))
    assert torch.allclose(rewards[:, 0], expected, atol=1e-4)  # x_0 of the chain is the initial noise
    assert torch.allclose(rewards[:, -1], rewards_set.combine(batch.values))


def test_dense_with_reward_shaping_is_refused_by_name(tmp_path):
    from align.schema import ConfigError

    with pytest.raises((ValueError, ConfigError), match="dense advantages come from per-step reward gains"):
        _collected("dense-grpo.yaml", tmp_path, ["algorithm.shaping.par=0.1"])


def test_noise_calibration_shrinks_a_spoiling_step_grows_a_silent_one_and_keeps_a_balanced_one():
    # three window steps (schedule indices 2, 3, 4) over six samples; gain = next column - this one
    step_rewards = torch.tensor(
        [
            [0.5, 0.4, 0.4, 0.6],
            [0.5, 0.3, 0.3, 0.2],
            [0.5, 0.2, 0.2, 0.5],
            [0.5, 0.6, 0.6, 0.4],
            [0.5, 0.1, 0.1, 0.1],
            [0.5, 0.5, 0.5, 0.5],
        ]
    )
    # step 2: 4 losses of 5 moved (0.8 > 0.6): shrink; step 3: nothing moved: grow; step 4: 2 of 4
    scales, shares = calibrate_noise({2: 1.0, 3: 2.9, 4: 0.7}, step_rewards, [2, 3, 4], rate=0.2, band=0.1)
    assert shares[0] == pytest.approx(0.8) and shares[1] is None and shares[2] == pytest.approx(0.5)
    assert scales[2] == pytest.approx(0.8)  # 1.0 * (1 - 0.2)
    assert scales[3] == pytest.approx(3.0)  # 2.9 * 1.2 = 3.48, held at the upper bound
    assert scales[4] == pytest.approx(0.7)  # balanced: unchanged
    gaining = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0]])  # 1 loss of 3 < 0.4: grow
    assert calibrate_noise({}, gaining, [0], rate=0.5, band=0.1)[0] == {0: pytest.approx(1.5)}


def test_dense_calibration_scales_the_next_epochs_window_noise_and_survives_state(tmp_path):
    run, plan, batch = _collected(
        "dense-grpo.yaml", tmp_path, ["algorithm.dense.calibration=0.25", "algorithm.window.starts=[1, 2]"]
    )
    algorithm, window = run.algorithm, batch.stats["noise_window"]
    assert window == [1, 2] and batch.stats["noise_scales"] == [1.0, 1.0]
    assert set(algorithm.noise_scales) == {1, 2}
    assert all(v in (pytest.approx(0.75), 1.0, pytest.approx(1.25)) for v in algorithm.noise_scales.values())
    algorithm.noise_scales = {1: 0.5, 2: 2.0}  # as if calibrated; the next collection samples with them
    state = algorithm.state_dict()
    algorithm.noise_scales = {}
    algorithm.load_state_dict(state)
    again = algorithm.collect(1, plan.prompts, plan.group_ids, plan.seeds)
    levels = again.trajectory.noise_levels.tolist()
    assert levels[1] == pytest.approx(0.7 * 0.5) and levels[2] == pytest.approx(0.7 * 2.0)
    assert levels[0] == 0.0 and levels[3] == 0.0


def test_dense_settings_cannot_be_written_without_dense(tmp_path):
    """Dense's knobs live under `dense`, so writing one turns it on (and on a shaped recipe that is
    refused by name); the flat key of the earlier release, without dense on, is an unknown key."""
    from align.schema import ConfigError

    with pytest.raises(ConfigError, match="dense advantages come from per-step reward gains"):
        _collected("shaped-grpo.yaml", tmp_path, ["algorithm.dense.calibration=0.1"])
    with pytest.raises(ConfigError, match="algorithm.dense_calibration: unknown key"):
        _collected("shaped-grpo.yaml", tmp_path, ["algorithm.dense_calibration=0.1"])


def test_pareto_rank_signal_is_minus_the_rank_within_each_group():
    values = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: (1,1) and (2,0) are the front, (0,0) is beaten by both; group 1: a chain of three
    assert pareto_rank_signal(values, groups).tolist() == [0.0, -1.0, 0.0, -2.0, 0.0, -1.0]


def test_pareto_rank_trains_every_sample_on_its_group_rank(tmp_path):
    import pattern_reward  # noqa: F401  (registers test-pattern)

    from align.losses import group_advantages

    terms = "rewards.terms=[{name: jpeg-compressibility}, {name: test-pattern}]"
    run, plan, batch = _collected("flow-grpo.yaml", tmp_path, ["algorithm.shaping.pareto=rank", terms])
    values = torch.stack([batch.values["jpeg-compressibility"], batch.values["test-pattern"]], dim=1)
    ranks = torch.cat([pareto_ranks(values[plan.group_ids == g]) for g in plan.group_ids.unique()])
    assert ranks.max() >= 1  # the two rewards disagree only in part: some samples are dominated
    expected, _ = group_advantages(pareto_rank_signal(values, plan.group_ids), plan.group_ids)
    assert torch.allclose(batch.advantages, expected, atol=1e-5)
    front = float((pareto_rank_signal(values, plan.group_ids) == 0).float().mean())
    assert batch.stats["pareto_front_fraction"] == pytest.approx(front) and front < 1


def test_a_run_bounds_the_cap_on_each_maximised_term_by_its_weight_without_normalisation(tmp_path):
    from pathlib import Path

    from align.config import load_config
    from align.loop import Run

    recipe = Path(__file__).parents[1] / "configs" / "tiny" / "shaped-grpo.yaml"
    caps = "algorithm.shaping.constraints=[{name: jpeg-compressibility, at_most: 0.5}, {name: jpeg-incompressibility, at_most: -1.0}]"
    run = Run(load_config(recipe, [caps, "rewards.terms.0.weight=0.7"]), tmp_path / "a")
    assert run.algorithm.constraints.ceilings == {"jpeg-compressibility": 0.7}  # weight 0: not maximised
    run = Run(load_config(recipe, [caps, "rewards.normalise=group"]), tmp_path / "b")
    assert run.algorithm.constraints.ceilings == {}  # normalised, the weight is not the raw reward's scale


def test_batch_advantages_by_hand():
    from align.shaping import batch_advantages

    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, unbiased std sqrt(14 / 3)
    expected = torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (math.sqrt(14 / 3) + 1e-6)
    assert torch.allclose(batch_advantages(rewards), expected)


def test_tracked_advantages_use_the_prompts_history_once_it_is_long_enough():
    from align.shaping import tracked_advantages

    history = {"a": [0.0, 2.0]}  # with this batch's 4.0: [0, 2, 4], mean 2, std 2
    rewards = torch.tensor([4.0, 1.0, 3.0])
    advantages, updated = tracked_advantages(history, ["a", "b", "b"], rewards, buffer=3, min_count=3)
    assert advantages[0] == pytest.approx((4.0 - 2.0) / (2.0 + 1e-6))
    # "b" has 2 rewards, under min_count: the batch's mean 8/3 and std sqrt(7/3)
    batch_std = math.sqrt(((4 - 8 / 3) ** 2 + (1 - 8 / 3) ** 2 + (3 - 8 / 3) ** 2) / 2)
    assert advantages[1] == pytest.approx((1.0 - 8 / 3) / (batch_std + 1e-6), rel=1e-5)
    assert updated == {"a": [0.0, 2.0, 4.0], "b": [1.0, 3.0]} and history == {"a": [0.0, 2.0]}  # pure
    _, again = tracked_advantages(updated, ["a"], torch.tensor([5.0]), buffer=3, min_count=3)
    assert again["a"] == [2.0, 4.0, 5.0]  # only the last `buffer` rewards are remembered


def test_mean_group_std_by_hand():
    from align.shaping import mean_group_std

    values = torch.tensor([0.0, 2.0, 1.0, 1.0, 5.0])  # groups: {0, 2} std sqrt 2, {1, 1} 0, {5} alone
    assert mean_group_std(values, torch.tensor([0, 0, 1, 1, 2])) == pytest.approx(math.sqrt(2) / 2)
