"""D3PO (Yang et al. 2024): online DPO on the denoising chain's own transitions.

Online DPO on final images (align/algorithms/dpo.py) re-noises each preferred and rejected image at a
random noise level and compares denoising errors; the comparison is spread over every noise level,
most of which decide details, not the layout the preference is about. D3PO instead treats each
stochastic sampling step as an action: for a pair (w preferred, l) of one prompt's samples and a step
s of the SDE window, with rho(x) = log pi(x_{s+1} | x_s) - log pi_ref(x_{s+1} | x_s) (per dimension,
the LoRA off for the reference),

    loss = -log sigmoid(beta * (rho(w) - rho(l)))

on the transitions the sampler actually took. The sampling, its SDE window (Flow-GRPO-Fast style),
the re-scoring of a transition and the per-step bookkeeping are Flow-GRPO's (align/algorithms/
stochastic.py); only the pairing and the loss differ. As in D3PO, a prompt's samples share their initial noise by
default (`shared_initial_noise`): the reward gap of a pair is then the policy's doing, not x_T's
luck. The sigmoid is a soft trust region: once a pair's log-ratio margin exceeds a few / beta it
stops pulling (beta 1000: a few 1e-3 per dimension, where Flow-GRPO's clip acts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.algorithms.base import Rollouts, register_algorithm
from align.algorithms.dpo import draw_pairs
from align.algorithms.policy_gradient_config import TrajectoryDPOConfig
from align.algorithms.stochastic import StochasticRollouts
from align.losses import dpo_loss


@dataclass
class PairedRollouts(Rollouts):
    """Rollouts and the pairs drawn from them: rows of the preferred and of the rejected sample."""

    chosen: torch.Tensor | None = None  # [P] row indices
    rejected: torch.Tensor | None = None  # [P]


class TrajectoryDPO(StochasticRollouts):
    def __init__(self, context):
        if context.config.train.group_size < 2:
            raise ValueError("d3po pairs samples of one prompt: set train.group_size to 2 or more")
        if context.config.train.trainable != "lora":
            raise ValueError("d3po needs train.trainable=lora: the reference policy is the LoRA disabled")
        super().__init__(context)

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        sampled = self.sample(epoch, prompts, group_ids, seeds)
        settings = self.context.settings
        reward = self.context.rewards.combine(sampled.values)
        chosen, rejected, pair_stats = draw_pairs(reward, group_ids, settings.pairing, settings.reward_margin)
        grouped = self.context.rewards.combine(sampled.values, group_ids)  # the spread GRPO would see
        stats = sampled.stats(grouped, group_ids) | {"reward": float(reward.mean()), "pairs": len(chosen), **pair_stats}
        return sampled.batch(PairedRollouts, stats, reward=reward, chosen=chosen.cpu(), rejected=rejected.cpu())

    def micro_batches(self, batch, generator):
        """Micro-batches of shuffled pairs (two samples each); within each, one unit per trained step."""
        size = max(1, self.context.config.train.micro_batch_size // 2)
        order = torch.randperm(len(batch.chosen), generator=generator)
        return [
            (order[i : i + size], k) for i in range(0, len(order), size) for k in range(batch.steps.shape[1])
        ]

    def loss(self, batch, unit):
        pairs, k = unit
        settings = self.context.settings
        chosen, rejected = batch.chosen[pairs], batch.rejected[pairs]
        rows = torch.cat([chosen, rejected])
        trajectory = batch.trajectory.select(rows)
        step = batch.steps[chosen, k]  # both samples of a pair at the same step of the schedule
        steps = torch.cat([step, step])
        policy = self.rescore(trajectory, steps).log_prob
        reference = self.reference_rescore(trajectory, steps).log_prob
        scale = self.log_prob_scale(trajectory)
        chosen_ratio, rejected_ratio = ((policy - reference) * scale).chunk(2)
        loss, stats = dpo_loss(chosen_ratio, rejected_ratio, settings.beta, settings.label_smoothing)
        stats["dpo_loss"] = float(loss.detach())
        return loss, stats


register_algorithm("d3po", TrajectoryDPOConfig)(TrajectoryDPO)
