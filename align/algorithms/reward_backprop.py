"""Reward backpropagation through the sampler: AlignProp, DRaFT-K, DRaFT-LV and ReFL.

collect() rolls the deterministic (ODE / DDIM eta 0) chain out without gradients and scores it;
loss() replays the part that carries gradients from the stored latents (identical numbers, since
the chain is deterministic), decodes and maximises the differentiable reward:

  alignprop  the last K steps, K drawn uniformly from [truncation_min, T] each time (AlignProp's
             randomised truncated backprop; K = T is full backprop)
  draft      the last K steps (DRaFT-K, Clark et al. 2024)
  draft-lv   K = 1 with the lower-variance estimator: the final latent is re-noised to the last
             step's sigma `lv_repeats` times and each one-step denoise is scored (DRaFT-LV, eq. 5)
  refl       one-step prediction of x_0 from a random late step (ReFL, Xu et al. 2023)

Every denoiser call with gradients is activation-checkpointed, and so is the VAE decoder, so memory
grows with K and not with the number of steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from align.algorithms.base import Algorithm, register_algorithm
from align.schema import param
from samplers.noise import draw_noise, generators_from_seeds
from samplers.rollout import rollout


@dataclass
class RewardBackpropConfig:
    name: str
    grad_steps: int = param(1, min=1)  # K: steps with gradients (draft); more is less biased, more memory
    truncation_min: int = param(1, min=1)  # alignprop: K ~ U[truncation_min, T]
    lv_repeats: int = param(2, min=1)  # draft-lv: re-noised copies of the final latent
    refl_range: list[float] = param(factory=lambda: [0.6, 0.9])  # refl: start step as a fraction of T
    checkpoint: bool = True  # activation checkpointing of each denoiser call and of the decoder

    def check(self):
        low, high = (self.refl_range + [0, 0])[:2]
        if len(self.refl_range) != 2 or not 0 <= low <= high <= 1:
            yield ["refl_range"], "must be [low, high] with 0 <= low <= high <= 1"


@dataclass
class AlignPropConfig(RewardBackpropConfig):
    name: str = "alignprop"


@dataclass
class DraftConfig(RewardBackpropConfig):
    name: str = "draft"


@dataclass
class DraftLVConfig(RewardBackpropConfig):
    name: str = "draft-lv"


@dataclass
class ReFLConfig(RewardBackpropConfig):
    name: str = "refl"


class RewardBackprop(Algorithm):
    def __init__(self, context):
        super().__init__(context)
        if not context.rewards.differentiable:
            stuck = [n for n, r in context.rewards.rewards.items() if not r.differentiable]
            raise ValueError(
                f"{context.settings.name} backpropagates through the reward, but {', '.join(stuck)} is not "
                "differentiable; use flow-grpo (or ddpo) for black-box rewards"
            )

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        context = self.context
        num_steps = context.config.sampling.num_steps
        trajectory = context.adapter.sample(prompts, generators_from_seeds(seeds), num_steps=num_steps)
        images = context.adapter.decode(trajectory.final).float()
        values = context.rewards.score(images, prompts)
        reward = context.rewards.combine(values, group_ids)
        rng = random.Random(context.config.train.seed * 31 + epoch)
        return {
            "trajectory": trajectory,
            "images": images,
            "values": values,
            "seeds": seeds,
            "epoch": epoch,
            "rng": rng,
            "stats": {"reward": float(reward.mean())},
        }

    def units(self, batch, generator):
        size = self.context.config.train.micro_batch_size
        order = torch.randperm(batch["trajectory"].batch_size, generator=generator)
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _decode(self, latents):
        adapter = self.context.adapter
        if self.context.settings.checkpoint:
            return activation_checkpoint(adapter.decode, latents, use_reentrant=False)
        return adapter.decode(latents)

    def loss(self, batch, rows):
        context, settings = self.context, self.context.settings
        sub = batch["trajectory"].select(rows)
        num_steps = sub.num_steps
        with context.accelerator.autocast():
            if settings.name == "refl":
                low, high = settings.refl_range
                start = batch["rng"].randint(int(low * (num_steps - 1)), int(high * (num_steps - 1)))
                final = self._one_step(
                    sub.latents[:, start], sub.timesteps[:, start], sub.sigmas[:, start], sub.cond
                )
                stats = {"start_step": start}
            elif settings.name == "draft-lv":
                final, stats = self._draft_lv(sub, [batch["seeds"][int(i)] for i in rows], batch["epoch"])
            else:
                k = settings.grad_steps
                if settings.name == "alignprop":
                    k = batch["rng"].randint(min(settings.truncation_min, num_steps), num_steps)
                final = self._replay(sub, min(k, num_steps))
                stats = {"grad_steps": min(k, num_steps)}
            images = self._decode(final)
        prompts = sub.prompts if settings.name != "draft-lv" else sub.prompts * settings.lv_repeats
        values = context.rewards.score(images, prompts)
        reward = context.rewards.combine(values)
        stats["backprop_reward"] = float(reward.detach().mean())
        return -reward.mean(), stats

    def _replay(self, sub, k: int) -> torch.Tensor:
        """The last k steps again, with gradients, from the stored latent before them."""
        from samplers.types import Schedule

        start = sub.num_steps - k
        schedule = Schedule(timesteps=sub.timesteps[0, start:], sigmas=sub.sigmas[0, start:])
        adapter = self.context.adapter
        out = rollout(
            adapter.denoise,
            adapter.step,
            schedule,
            sub.latents[:, start],
            sub.cond,
            prompts=sub.prompts,
            grad_steps=k,
            checkpoint=self.context.settings.checkpoint,
        )
        return out.final

    def _one_step(self, x, t, sigma, cond) -> torch.Tensor:
        """x_0 predicted in one step from (x, sigma): the step function taken to sigma = 0."""
        adapter = self.context.adapter
        if self.context.settings.checkpoint:
            output = activation_checkpoint(adapter.denoise, x, t, cond, use_reentrant=False)
        else:
            output = adapter.denoise(x, t, cond)
        return adapter.step(output, x, sigma, torch.zeros_like(sigma)).sample

    def _draft_lv(self, sub, seeds, epoch):
        """DRaFT-LV: n re-noisings of the (detached) final latent to the last step's sigma."""
        repeats = self.context.settings.lv_repeats
        x0 = sub.final.detach()
        generators = generators_from_seeds([s * 7 + epoch for s in seeds])
        finals = []
        for _ in range(repeats):
            noise = draw_noise(tuple(x0.shape), generators, x0.device)
            sigma, t = sub.sigmas[:, -2], sub.timesteps[:, -1]
            noisy = self.context.adapter.add_noise(x0, noise, sigma)
            finals.append(self._one_step(noisy, t, sigma, sub.cond))
        return torch.cat(finals), {"lv_repeats": repeats}


register_algorithm("alignprop", AlignPropConfig)(RewardBackprop)
register_algorithm("draft", DraftConfig)(RewardBackprop)
register_algorithm("draft-lv", DraftLVConfig)(RewardBackprop)
register_algorithm("refl", ReFLConfig)(RewardBackprop)
