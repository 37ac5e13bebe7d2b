"""GRPO for causal language models (Shao et al. 2024, DeepSeekMath sec. 4.1), on the one loop.

Per epoch: sample `group_size` completions per prompt, score them with the rewards, turn rewards
into group advantages, then minimise PPO's clipped surrogate per token (the image pathway's
`ppo_clip_loss`), plus kl_coef * k3 KL to the reference (the LoRA disabled), both averaged over
the counted tokens of the micro-batch ("token", DAPO, Yu et al. 2025) or per sequence first
("sequence", the original GRPO). `clip_range_high` is DAPO's clip-higher; `scale_advantages:
false` is Dr. GRPO (Liu et al. 2025). With one inner epoch every micro-batch is trained before
the only optimiser step, so the policy that sampled is the one being trained: the old log-probs are
then the new ones detached (ratio exactly 1, as TRL does) and the scoring pass is skipped.
"""

from __future__ import annotations

import time

import torch

from align.algorithms.base import Algorithm, Rollouts, register_algorithm
from align.losses import group_advantages, k3_kl, masked_mean, ppo_clip_loss
from align.text.modality import TextModality
from align.text.settings import TextGRPOConfig


def reduce_tokens(values: torch.Tensor, mask: torch.Tensor, normalisation: str) -> torch.Tensor:
    """[B, T] -> scalar: mean over counted tokens ("token") or per sequence, then over the batch."""
    return masked_mean(values, mask) if normalisation == "token" else masked_mean(values, mask, dim=1).mean()


def local_group_advantages(context, signal, group_ids, scale: bool):
    """Group advantages over every process's samples; this process's slice."""
    advantages, zero_std = group_advantages(context.gather(signal), context.gather(group_ids), scale=scale)
    return context.local_slice(advantages), zero_std


@torch.no_grad()
def sample_and_score(context, prompts, group_ids, seeds, score: bool):
    """Sample the batch with the policy, score it: (trajectory, values {name: [B]}, signal [B], stats).

    One draw seeded by the batch's first seed: generation is batched, so the samples depend on the
    batch composition (the same on a rerun with the same processes)."""
    settings = context.settings
    start = time.perf_counter()
    with context.accelerator.autocast():
        trajectory = context.policy.sample(
            prompts,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=seeds[0],
            score=score,
        )
    sampled = time.perf_counter()
    values = context.rewards.score(trajectory.extra["texts"], prompts)
    context.rewards.observe(values)
    signal = context.rewards.combine(values, group_ids)
    mask = trajectory.extra["completion_mask"]
    stats = {
        "reward": float(signal.mean()),
        "completion_tokens": float(mask.sum(1).float().mean()),
        "truncated_fraction": float(trajectory.extra["truncated"].float().mean()),
        "time/sampling": sampled - start,
        "time/reward": time.perf_counter() - sampled,
    }
    return trajectory, values, signal, stats


class TextGRPO(Algorithm):
    modality = TextModality

    def __init__(self, context):
        super().__init__(context)
        settings, policy = context.settings, context.policy
        if context.config.train.group_size < 2:
            raise ValueError("text-grpo compares samples of a prompt: set train.group_size >= 2")
        if settings.kl_coef > 0 and not policy.is_lora and policy.reference_model is None:
            raise ValueError(
                "algorithm.kl_coef > 0 needs train.trainable=lora (the reference is the LoRA off)"
            )
        train = context.config.train
        self.rescore = train.inner_epochs > 1 or train.steps_per_pass > 1  # else on-policy: old = new

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        context, settings, policy = self.context, self.context.settings, self.context.policy
        trajectory, values, signal, stats = sample_and_score(context, prompts, group_ids, seeds, self.rescore)
        advantages, stats["zero_std_fraction"] = local_group_advantages(
            context, signal, group_ids, settings.scale_advantages
        )
        if settings.kl_coef > 0:
            with context.accelerator.autocast():
                trajectory.extra["reference_log_probs"] = policy.reference_log_probs(
                    trajectory.extra, settings.temperature
                )
        return Rollouts(stats=stats, values=values, trajectory=trajectory, advantages=advantages)

    def micro_batches(self, batch, generator):
        size = self.context.config.train.micro_batch_size
        order = torch.randperm(batch.trajectory.batch_size, generator=generator)
        return [order[i : i + size] for i in range(0, len(order), size)]

    def loss(self, batch, rows):
        context, settings = self.context, self.context.settings
        trajectory = batch.trajectory.select(rows)
        mask = trajectory.extra["completion_mask"]
        with context.accelerator.autocast():
            log_probs = context.policy.token_log_probs(trajectory.extra, settings.temperature)
        old = trajectory.log_probs if self.rescore else log_probs.detach()
        loss, stats = ppo_clip_loss(
            log_probs,
            old,
            batch.advantages[rows],
            settings.clip_range,
            mask=mask,
            normalisation=settings.normalisation,
            clip_range_high=settings.clip_range_high,
        )
        if settings.kl_coef > 0:
            kl = reduce_tokens(
                k3_kl(log_probs, trajectory.extra["reference_log_probs"]), mask, settings.normalisation
            )
            loss = loss + settings.kl_coef * kl
            stats["kl"] = kl.detach()
        stats["policy_loss"] = loss.detach()
        return loss, stats


register_algorithm("text-grpo", TextGRPOConfig)(TextGRPO)
