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
grows with K and not with the number of steps; checkpointing recomputes each forward pass in backward,
so it is switched on only where the activations it would keep exceed `checkpoint_above_mb` (measured
once, per row, on one denoiser call and one decode). Before that, DRaFT and AlignProp split a
micro-batch whose replay would exceed the limit into smaller units (the same gradient, nothing
recomputed); only where one row alone exceeds it do they checkpoint. When every loss replays the whole
chain (alignprop with truncation_min >= T, draft with grad_steps >= T), collect() samples nothing: the
replay from x_T is the epoch's sample, and loss() records its images and rewards in the batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from align.algorithms.base import (
    Algorithm,
    Collected,
    constraints_for,
    reference_rewards,
    register_algorithm,
    saved_bytes,
)
from align.algorithms.reward_backprop_config import AlignPropConfig, DraftConfig, DraftLVConfig, ReFLConfig
from align.shaping import par_shape
from samplers.noise import draw_noise, generators_from_seeds
from samplers.rollout import rollout
from samplers.types import Schedule, Trajectory


@dataclass
class Chains(Collected):
    """The epoch's deterministic chains, or only their seeds when each loss samples its rows itself."""

    prompts: list[str] = field(default_factory=list)  # [B]
    seeds: list[int] = field(default_factory=list)  # [B] x_T seeds
    epoch: int = 0
    rng: random.Random | None = None  # draws each loss's K (alignprop) or start step (refl), in order
    trajectory: Trajectory | None = None  # [B, T]; None: the replay from x_T is the epoch's sample
    combined: list[torch.Tensor] = field(default_factory=list)  # replayed rows' combined rewards
    multipliers: dict[str, float] = field(default_factory=dict)  # constraints' lambdas for this batch
    seen: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # constrained terms as replayed


class RewardBackprop(Algorithm):
    """What every reward-backprop variant shares: the no-grad rollout, checkpointing, decoding and the
    reward; a subclass says how the latents to decode are reached with gradients (`_final`)."""

    def __init__(self, context):
        super().__init__(context)
        if not context.rewards.differentiable:
            stuck = [n for n, r in context.rewards.rewards.items() if not r.differentiable]
            remote = [n for n, r in context.rewards.rewards.items() if hasattr(r, "client")]
            why = (
                f" ({', '.join(remote)} is scored on a reward server: remote gradients are not supported)"
                if remote
                else ""
            )
            raise ValueError(
                f"{context.settings.name} backpropagates through the reward, but {', '.join(stuck)} is not "
                f"differentiable{why}; use flow-grpo (or ddpo) for black-box rewards"
            )
        self.constraints = constraints_for(
            context, context.settings.constraints, context.settings.constraint_lr
        )
        self.reference_rewards: dict[str, float] = {}  # PAR: the reference model's reward per prompt
        self.seen: dict[str, list[torch.Tensor]] = {}  # the constrained terms of the last batch's replays
        self.row_bytes: tuple[int, int] | None = None  # _row_bytes(): measured on first use
        self.blocks_decided = False  # checkpoint_blocks: set on the adapter once, by the first replay

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        context = self.context
        num_steps = context.config.sampling.num_steps
        rng = random.Random(context.config.train.seed * 31 + epoch)
        batch = Chains(prompts=list(prompts), seeds=seeds, epoch=epoch, rng=rng)
        if self.constraints.constraints and self.seen:  # one multiplier step per batch, as flow-grpo's
            values = {name: context.gather(torch.cat(parts)) for name, parts in self.seen.items()}
            self.constraints.update(values)
        batch.multipliers, self.seen = dict(self.constraints.multipliers), batch.seen
        batch.stats.update({f"lambda/{k}": v for k, v in self.constraints.multipliers.items()})
        if self._replays_whole_chain(num_steps):
            return batch  # each loss samples its rows from x_T with gradients: nothing to sample twice
        trajectory = context.adapter.sample(prompts, generators_from_seeds(seeds), num_steps=num_steps)
        images = context.adapter.decode(trajectory.final).float()
        values = context.rewards.score(images, prompts)
        reward = context.rewards.combine(values, group_ids)
        batch.trajectory, batch.images, batch.values = trajectory, images, values
        batch.stats["reward"] = float(reward.mean())
        return batch

    def _replays_whole_chain(self, num_steps: int) -> bool:
        """Does every loss replay all `num_steps` steps from x_T (so collect() need not sample)?"""
        return False

    def micro_batches(self, batch, generator):
        return self._units(batch, generator, self.context.config.train.micro_batch_size)

    @staticmethod
    def _units(batch, generator, size: int) -> list[torch.Tensor]:
        order = torch.randperm(len(batch.seeds), generator=generator)
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _final(self, batch: Chains, rows) -> tuple[torch.Tensor, bool, dict]:
        """(x_0 of `rows` with gradients [n * len(rows), ...], whether to checkpoint the decoder, stats)."""
        raise NotImplementedError

    def loss(self, batch, rows):
        context = self.context
        with context.accelerator.autocast():
            final, checkpoint, stats = self._final(batch, rows)
            images = self._decode(final, checkpoint)
        prompts = [batch.prompts[int(i)] for i in rows] * (final.shape[0] // len(rows))
        values = context.rewards.score(images, prompts)
        reward = context.rewards.combine(values)
        if batch.trajectory is None:
            _record_samples(batch, rows, images, values, reward)
        stats["backprop_reward"] = float(reward.detach().mean())
        return -self._shaped(batch, reward, values, prompts, stats).mean(), stats

    def _shaped(self, batch, reward, values, prompts, stats) -> torch.Tensor:
        """The constraints' Lagrangian, then PAR's sigmoid, on the combined reward [B] (with gradients)."""
        settings = self.context.settings
        if self.constraints.constraints:
            for name in self.constraints.multipliers:
                batch.seen.setdefault(name, []).append(values[name].detach().float())
            reward = self.constraints.shape(reward, values, batch.multipliers)
        if settings.shaping == "par":
            reference = reference_rewards(self.context, self.reference_rewards, prompts).to(reward.device)
            stats["par_reference"] = float(reference.mean())
            reward = par_shape(reward, reference, settings.par_temperature)
        return reward

    def state_dict(self):
        return {
            "constraints": self.constraints.state_dict(),
            "reference_rewards": dict(self.reference_rewards),
            "seen": {name: [t.tolist() for t in parts] for name, parts in self.seen.items()},
        }

    def load_state_dict(self, state):
        self.constraints.load_state_dict(state.get("constraints", {}))
        self.reference_rewards = dict(state.get("reference_rewards", {}))
        self.seen = {name: [torch.tensor(t) for t in parts] for name, parts in state.get("seen", {}).items()}

    def _row_bytes(self, batch: Chains) -> tuple[int, int]:
        """(bytes one row's denoiser call keeps for backward, bytes one row's decode keeps), measured
        once on the batch's first prompt and noise: per row, so that measuring never holds more than one
        row's activations (the part that does not grow with the batch counts once per row: an upper
        bound). The latent carries a gradient, as every replayed step's but the first does."""
        if self.row_bytes is None:
            adapter, steps = self.context.adapter, self.context.config.sampling.num_steps
            generators = generators_from_seeds(batch.seeds[:1])
            x = adapter.initial_noise(generators, 1, steps).requires_grad_(True)
            t = adapter.schedule(steps).timesteps[:1].float()
            with adapter.eager():
                step = saved_bytes(adapter.denoise, x, t, adapter.encode(batch.prompts[:1]))
            self.row_bytes = step, saved_bytes(adapter.decode, x)
        return self.row_bytes

    def _checkpointing(self, batch: Chains, rows: int, grad_steps: int) -> bool:
        """Checkpoint the denoiser calls and the decoder of a replay of `rows` rows through `grad_steps`
        steps? Only where the activations they would keep exceed checkpoint_above_mb. With
        checkpoint_blocks, where one call's own activations exceed the limit too, the model (or the
        decoder) also checkpoints inside the call, block by block: backward's recompute then holds one
        block, not one whole call."""
        settings = self.context.settings
        if not settings.checkpoint or settings.checkpoint_above_mb == 0:
            return settings.checkpoint
        step, decode = self._row_bytes(batch)
        limit = settings.checkpoint_above_mb * 2**20
        if settings.checkpoint_blocks and not self.blocks_decided:
            self.context.adapter.checkpoint_blocks(
                denoiser=rows * step > limit, decoder=rows * decode > limit
            )
            self.blocks_decided = True
        return rows * (grad_steps * step + decode) > limit

    def _decode(self, latents, checkpoint: bool):
        adapter = self.context.adapter
        if checkpoint:
            return activation_checkpoint(adapter.decode, latents, use_reentrant=False)
        return adapter.decode(latents)

    def _one_step(self, x, t, sigma, cond) -> torch.Tensor:
        """x_0 predicted in one step from (x, sigma): the step function taken to sigma = 0."""
        adapter = self.context.adapter
        if self.context.settings.checkpoint:
            output = activation_checkpoint(adapter.denoise, x, t, cond, use_reentrant=False)
        else:
            output = adapter.denoise(x, t, cond)
        return adapter.step(output, x, sigma, torch.zeros_like(sigma)).sample


class DRaFT(RewardBackprop):
    """DRaFT-K: the last K = grad_steps steps run again with gradients."""

    def _grad_steps(self, batch: Chains, num_steps: int) -> int:
        return self.context.settings.grad_steps

    def _replays_whole_chain(self, num_steps: int) -> bool:
        return self.context.settings.grad_steps >= num_steps

    def _most_grad_steps(self, num_steps: int) -> int:
        return min(self.context.settings.grad_steps, num_steps)

    def micro_batches(self, batch, generator):
        """Micro-batches of micro_batch_size rows, or of its largest divisor that keeps a replay's
        activations under checkpoint_above_mb: without checkpointing where a row's whole replay fits
        (smaller units recompute nothing, so they come first), else checkpointed, with as many rows as
        keep one recomputed call (a denoiser step or the decode) under it. Each unit's loss is the mean
        over its rows and the units of one step are averaged: the same gradient as one micro-batch."""
        size = self.context.config.train.micro_batch_size
        settings = self.context.settings
        if settings.checkpoint and settings.checkpoint_above_mb > 0:
            step, decode = self._row_bytes(batch)
            replay = self._most_grad_steps(self.context.config.sampling.num_steps) * step + decode
            limit = settings.checkpoint_above_mb * 2**20
            row = replay if replay <= limit else max(step, decode)  # under checkpointing: one call at a time
            size = next((d for d in range(size, 0, -1) if size % d == 0 and d * row <= limit), 1)
        return self._units(batch, generator, size)

    def _final(self, batch, rows):
        num_steps = self.context.config.sampling.num_steps
        k = min(self._grad_steps(batch, num_steps), num_steps)
        final, checkpoint = self._replay(batch, rows, k)
        return final, checkpoint, {"grad_steps": k}

    def _replay(self, batch, rows, k: int) -> tuple[torch.Tensor, bool]:
        """(x_0 of the last k steps run again with gradients, whether they were checkpointed): from the
        stored latent before them, or from x_T drawn from the rows' seeds when nothing was stored."""
        adapter = self.context.adapter
        if batch.trajectory is not None:
            sub = batch.trajectory.select(rows)
            start = sub.num_steps - k
            schedule = Schedule(timesteps=sub.timesteps[0, start:], sigmas=sub.sigmas[0, start:])
            x, cond, prompts = sub.latents[:, start], sub.cond, sub.prompts
        else:
            prompts = [batch.prompts[int(i)] for i in rows]
            generators = generators_from_seeds([batch.seeds[int(i)] for i in rows])
            x, cond, schedule = (
                adapter.initial_noise(generators, len(rows), k),
                adapter.encode(prompts),
                adapter.schedule(k),
            )
        checkpoint = self._checkpointing(batch, len(rows), k)
        out = rollout(
            adapter.denoise,
            adapter.step,
            schedule,
            x,
            cond,
            prompts=prompts,
            grad_steps=k,
            checkpoint=checkpoint,
        )
        return out.final, checkpoint


class AlignProp(DRaFT):
    """AlignProp: DRaFT-K with K drawn uniformly from [truncation_min, T] for every loss."""

    def _grad_steps(self, batch, num_steps):
        return batch.rng.randint(min(self.context.settings.truncation_min, num_steps), num_steps)

    def _replays_whole_chain(self, num_steps):
        return self.context.settings.truncation_min >= num_steps

    def _most_grad_steps(self, num_steps):
        return num_steps


class DRaFTLV(RewardBackprop):
    """DRaFT-LV: `lv_repeats` re-noisings of the (detached) final latent to the last step's sigma, each
    denoised in one step."""

    def _final(self, batch, rows):
        repeats = self.context.settings.lv_repeats
        sub = batch.trajectory.select(rows)
        x0 = sub.final.detach()
        generators = generators_from_seeds([batch.seeds[int(i)] * 7 + batch.epoch for i in rows])
        finals = []
        for _ in range(repeats):
            noise = draw_noise(tuple(x0.shape), generators, x0.device)
            sigma, t = sub.sigmas[:, -2], sub.timesteps[:, -1]
            noisy = self.context.adapter.add_noise(x0, noise, sigma)
            finals.append(self._one_step(noisy, t, sigma, sub.cond))
        return torch.cat(finals), self.context.settings.checkpoint, {"lv_repeats": repeats}


class ReFL(RewardBackprop):
    """ReFL: the one-step prediction of x_0 from a random late step of the stored chain."""

    def _final(self, batch, rows):
        settings = self.context.settings
        num_steps = self.context.config.sampling.num_steps
        sub = batch.trajectory.select(rows)
        low, high = settings.refl_range
        start = batch.rng.randint(int(low * (num_steps - 1)), int(high * (num_steps - 1)))
        final = self._one_step(sub.latents[:, start], sub.timesteps[:, start], sub.sigmas[:, start], sub.cond)
        return final, settings.checkpoint, {"start_step": start}


def _record_samples(batch: Chains, rows, images, values, reward) -> None:
    """Keep the replayed rows' images, rewards and mean combined reward as the epoch's samples."""
    size = len(batch.seeds)
    if batch.images is None:
        batch.images = images.new_zeros((size, *images.shape[1:]))
        batch.values = {name: value.new_zeros(size) for name, value in values.items()}
    batch.images[rows] = images.detach().float()
    for name, value in values.items():
        batch.values[name][rows] = value.detach()
    batch.combined.append(reward.detach())
    batch.stats["reward"] = float(torch.cat(batch.combined).mean())


register_algorithm("alignprop", AlignPropConfig)(AlignProp)
register_algorithm("draft", DraftConfig)(DRaFT)
register_algorithm("draft-lv", DraftLVConfig)(DRaFTLV)
register_algorithm("refl", ReFLConfig)(ReFL)
