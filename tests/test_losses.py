"""Losses and advantages on hand-made tensors, with the arithmetic in each test."""

import math

import pytest
import torch

from align.losses import (
    LOG_2,
    dpo_loss,
    gaussian_mean_kl,
    group_advantages,
    k3_kl,
    masked_mean,
    ppo_clip_loss,
    simpo_loss,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    groups = torch.tensor([0, 0, 1, 1, 2])
    advantages, zero_std = group_advantages(rewards, groups, eps=0.0)
    # group 0: mean 2, unbiased std sqrt(2) -> (-1/sqrt2, 1/sqrt2); group 1 has no spread -> 0
    assert advantages[0].item() == pytest.approx(-1 / math.sqrt(2))
    assert advantages[1].item() == pytest.approx(1 / math.sqrt(2))
    assert advantages[2].item() == 0.0 and advantages[3].item() == 0.0
    assert advantages[4].item() == 0.0  # a group of one sample
    assert zero_std == pytest.approx(3 / 5)  # group 1 (2 samples) and the singleton have no spread


def test_group_advantages_without_scaling_only_centre():
    advantages, _ = group_advantages(
        torch.tensor([1.0, 3.0, 10.0, 20.0]), torch.tensor([0, 0, 1, 1]), scale=False
    )
    assert advantages.tolist() == [-1.0, 1.0, -5.0, 5.0]


def test_ppo_clip_loss_values_and_clip_fraction():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.1]))
    advantages = torch.tensor([1.0, 1.0, -1.0, -2.0])
    loss, stats = ppo_clip_loss(new, old, advantages, clip_range=0.2)
    # per sample: max(-A r, -A clip(r)) = [-1, -1.2, 0.8, 2.2]
    assert loss.item() == pytest.approx((-1 - 1.2 + 0.8 + 2.2) / 4)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert stats["ratio_max"] == pytest.approx(1.5)


def test_ppo_ratio_one_gives_minus_mean_advantage_and_its_gradient():
    log_probs = torch.tensor([-3.0, -1.0], requires_grad=True)
    loss, stats = ppo_clip_loss(log_probs, log_probs.detach(), torch.tensor([2.0, -1.0]), clip_range=1e-4)
    assert loss.item() == pytest.approx(-0.5) and stats["clip_fraction"] == 0
    loss.backward()
    assert log_probs.grad.tolist() == pytest.approx([-1.0, 0.5])  # -A / B


def test_ppo_masked_token_and_sequence_normalisation():
    log_probs = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages = torch.tensor([1.0, 4.0])
    token, _ = ppo_clip_loss(log_probs, log_probs, advantages, 0.2, mask=mask, normalisation="token")
    sequence, _ = ppo_clip_loss(log_probs, log_probs, advantages, 0.2, mask=mask, normalisation="sequence")
    assert token.item() == pytest.approx(-(1 + 1 + 4) / 3)
    assert sequence.item() == pytest.approx(-(1 + 4) / 2)
    assert masked_mean(torch.tensor([[1.0, 9.0]]), torch.tensor([[1, 0]])).item() == 1.0


def test_gaussian_mean_kl_by_hand():
    mean = torch.zeros(2, 4)
    reference = torch.full((2, 4), 0.5)
    kl = gaussian_mean_kl(mean, reference, torch.tensor([0.5, 0.0]))
    assert kl.tolist() == pytest.approx([0.25 / (2 * 0.25), 0.0])


def test_k3_kl_is_zero_at_equality_and_positive_elsewhere():
    a = torch.tensor([[-1.0, -2.0]])
    assert k3_kl(a, a).abs().max() == 0
    assert (k3_kl(a, a + 0.3) > 0).all()


def test_dpo_loss_is_log2_at_start_and_signs_follow_preference():
    zero = torch.zeros(3)
    loss, stats = dpo_loss(zero, zero, beta=0.1)
    assert loss.item() == pytest.approx(LOG_2)
    better, stats = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), beta=0.5)
    assert better.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))  # beta * margin 2 = 1
    assert stats["reward_margin"] == pytest.approx(1.0) and stats["reward_accuracy"] == 1.0
    worse, _ = dpo_loss(torch.tensor([-1.0]), torch.tensor([1.0]), beta=0.5)
    assert worse.item() > LOG_2 > better.item()
    stronger, _ = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), beta=2.0)
    assert stronger.item() < better.item()  # beta scales the implicit reward


def test_simpo_loss_margin():
    loss, stats = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert stats["reward_margin"] == pytest.approx(2.0)


def test_group_advantages_with_one_batch_std():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])
    advantages, zero_std = group_advantages(rewards, torch.tensor([0, 0, 1, 1]), std_over="batch", eps=0.0)
    # group means 2 and 2; batch std of [1, 3, 2, 2] = sqrt(2/3): the centred rewards divided by it
    assert advantages.tolist() == pytest.approx([-1 / math.sqrt(2 / 3), 1 / math.sqrt(2 / 3), 0.0, 0.0])
    assert zero_std == pytest.approx(0.5)
    with pytest.raises(ValueError, match="std_over"):
        group_advantages(rewards, torch.tensor([0, 0, 1, 1]), std_over="prompt")
