"""D3PO: DPO on the sampler's own transitions, pairs of one prompt's samples at the same step."""

from pathlib import Path

import pytest
import torch

from align.cli import main
from align.config import load_config
from align.losses import LOG_2

RECIPE = Path(__file__).parents[1] / "configs" / "tiny" / "d3po.yaml"


def collected(tmp_path, *overrides):
    from align.loop import Run, plan_epoch

    config = load_config(RECIPE, list(overrides))
    run = Run(config, tmp_path / "run")
    plan = plan_epoch(run.prompts, config, 0, 0, 1)
    return run, plan, run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)


def test_pairs_are_each_groups_best_and_worst_and_the_loss_starts_at_log2(tmp_path):
    run, plan, batch = collected(tmp_path)
    groups = plan.group_ids
    assert len(batch.chosen) == batch.stats["pairs"] == len(groups.unique())  # a dense reward: no ties
    assert (groups[batch.chosen] == groups[batch.rejected]).all()
    for c, r in zip(batch.chosen.tolist(), batch.rejected.tolist(), strict=True):
        members = batch.reward[groups == groups[c]]
        assert batch.reward[c] == members.max() and batch.reward[r] == members.min()
    unit = run.algorithm.micro_batches(batch, torch.Generator().manual_seed(0))[0]
    loss, stats = run.algorithm.loss(batch, unit)
    assert loss.item() == pytest.approx(LOG_2, abs=1e-6)  # the policy is the reference
    loss.backward()
    grads = [p.grad for p in run.policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_loss_is_dpo_on_the_transition_log_ratios_of_one_step(tmp_path):
    from align.losses import dpo_loss

    run, _, batch = collected(tmp_path)
    with torch.no_grad():
        for parameter in run.policy.named_parameters().values():
            parameter.add_(0.05 * torch.randn_like(parameter))
    pairs, k = run.algorithm.micro_batches(batch, torch.Generator().manual_seed(0))[0]
    loss, _ = run.algorithm.loss(batch, (pairs, k))
    adapter, settings = run.context.adapter, run.context.settings
    chosen, rejected = batch.chosen[pairs], batch.rejected[pairs]
    step = batch.steps[chosen, k]
    ratios = []
    for rows in (chosen, rejected):
        trajectory = batch.trajectory.select(rows)
        with torch.no_grad():
            policy = adapter.rescore(trajectory, step).log_prob
            with run.policy.reference():
                reference = adapter.rescore(trajectory, step).log_prob
        ratios.append((policy - reference) / trajectory.latents[0, 0].numel())
    expected, _ = dpo_loss(ratios[0], ratios[1], settings.beta)
    assert abs(float(expected) - LOG_2) > 1e-4  # the perturbed policy tells the pair apart
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)


def test_all_pairing_uses_every_pair_above_the_margin(tmp_path):
    _, _, best_worst = collected(tmp_path)
    _, _, every = collected(tmp_path / "all", "algorithm.pairing=all", "algorithm.reward_margin=0.0")
    assert len(every.chosen) == 12 > len(best_worst.chosen) == 2  # two groups of 4: 6 pairs each
    assert (every.reward[every.chosen] >= every.reward[every.rejected]).all()


def test_shaping_options_cannot_be_written(tmp_path, capsys):
    """D3PO's config holds only its own knobs: Flow-GRPO's shaping is an unknown key, not a refusal."""
    code = main(["train", str(RECIPE), "algorithm.shaping.par=0.1", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "algorithm.shaping: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_groups_samples_share_their_initial_noise_by_default(tmp_path):
    _, plan, batch = collected(tmp_path)
    start = batch.trajectory.latents[:, 0]
    for group in plan.group_ids.unique():
        members = start[plan.group_ids == group]
        assert torch.equal(members, members[:1].expand_as(members))
    assert not torch.equal(start[plan.group_ids == 0][0], start[plan.group_ids == 1][0])
    _, _, independent = collected(tmp_path / "independent", "algorithm.shared_initial_noise=false")
    first = independent.trajectory.latents[plan.group_ids == 0, 0]
    assert not torch.equal(first[0], first[1])
