"""PRDP: Proximal Reward Difference Prediction (Deng et al. 2024).

The policy-gradient collection (stochastic rollouts with log-probs, two or more samples per prompt),
but instead of PPO's surrogate, a regression: for a pair (i, j) of one group and a trained step,
the scaled difference of their log-ratios to the sampling policy must predict their reward gap,

    loss = ( beta * T * (clip(l_i) - clip(l_j)) - (r_i - r_j) )^2,   l = log pi(x_{t-1}|x_t) - log pi_old(.)

with l clipped to [-clip_range, clip_range] (the proximal part, which keeps updates near the data
the pairs were drawn from). Its paper reports stable training on large prompt sets where DDPO's
and DPO's objectives destabilise.
"""

from __future__ import annotations

import torch

from align.algorithms.base import Rollouts, register_algorithm
from align.algorithms.policy_gradient_config import PRDPConfig
from align.algorithms.stochastic import StochasticRollouts


class PRDP(StochasticRollouts):
    def __init__(self, context):
        super().__init__(context)
        if context.config.train.group_size != 2:
            raise ValueError("prdp compares the two samples of a prompt: set train.group_size to 2")
        if context.config.train.micro_batch_size % 2:
            raise ValueError("prdp trains on whole pairs: make train.micro_batch_size even")

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        sampled = self.sample(epoch, prompts, group_ids, seeds)
        rewards = self.context.rewards
        signal = rewards.combine(sampled.values, group_ids)
        return sampled.batch(Rollouts, sampled.stats(signal, group_ids), reward=rewards.combine(sampled.values).detach())

    def micro_batches(self, batch, generator):
        """Shuffled pairs (samples 2p and 2p + 1 share a prompt), one unit per trained step."""
        pairs = batch.steps.shape[0] // 2
        order = torch.randperm(pairs, generator=generator)
        size = self.context.config.train.micro_batch_size // 2
        units = []
        for i in range(0, pairs, size):
            rows = torch.stack([2 * order[i : i + size], 2 * order[i : i + size] + 1], dim=1).flatten()
            units += [(rows, k) for k in range(batch.steps.shape[1])]
        return units

    def loss(self, batch, unit):
        rows, k = unit
        settings = self.context.settings
        trajectory = batch.trajectory.select(rows)
        # both samples of a pair train the step of the pair's first sample, so their ratios compare
        steps = batch.steps[rows[0::2], k].repeat_interleave(2)
        out = self.rescore(trajectory, steps)
        old = trajectory.log_probs[torch.arange(len(rows)), steps]
        scale = self.log_prob_scale(trajectory)
        log_ratio = ((out.log_prob - old) * scale).clamp(-settings.clip_range, settings.clip_range)
        predicted = settings.prdp_beta * trajectory.num_steps * (log_ratio[0::2] - log_ratio[1::2])
        reward = batch.reward[rows]
        target = reward[0::2] - reward[1::2]
        loss = ((predicted - target) ** 2).mean()
        return loss, {
            "prdp_loss": float(loss.detach()),
            "predicted_gap": float(predicted.detach().abs().mean()),
        }


register_algorithm("prdp", PRDPConfig)(PRDP)
