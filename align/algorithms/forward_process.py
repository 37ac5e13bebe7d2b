"""Forward-process RL: DiffusionNFT, Advantage Weighted Matching (AWM) and DGPO.

Both train on the policy's own clean samples with the pretraining objective, flow matching at fresh
forward-process noise, steered by reward; neither needs an SDE, log-probabilities of the sampling
chain, or CFG in training, so any of our solvers samples for them (the ODE at sampling.num_steps,
with the adapter's guidance). Per epoch:

    collect   sample each prompt's group with the ODE, score it, group advantages; noise every
              clean latent `draws` times (a sigma in algorithm.time_range of the adapter's training
              schedule, a fresh noise), and keep what the losses compare against, computed once
              under the policy that sampled: DiffusionNFT's old prediction, AWM's old errors
    units     (micro-batch rows, draw): every draw of every sample is trained once per pass
    loss      align.losses.nft_loss / awm_loss, plus kl_coef x the mean squared distance of the
              prediction from the reference's (the LoRA off)

DiffusionNFT (Zheng et al. 2025): the sampling policy is an "old" copy of the trainable weights,
an EMA of them whose decay grows by old_decay_rate per epoch from 0 (on-policy) up to
old_decay_max, as the paper's schedules do (its default rises by 0.001 per step to 0.5). A sample's
optimality r = clip(A / advantage_clip, -1, 1) / 2 + 0.5 from its group advantage.

AWM (Xue et al. 2025): flow matching weighted by the group advantage; -error stands in for the
sample's log-likelihood, PPO-clipped against the sampling policy's when clip_range is set. Without
its reference term negative advantages push away with nothing to hold them (the issue's probe
diverged), hence kl_coef > 0 by default.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from align.algorithms.base import Algorithm, Collected, register_algorithm
from align.algorithms.forward_process_config import AWMConfig, DGPOConfig, DiffusionNFTConfig
from align.algorithms.scoring import sample_and_score
from align.losses import awm_loss, dgpo_loss, group_advantages, matching_error, nft_loss
from samplers.noise import generators_from_seeds
from samplers.rollout import predicted_clean


@dataclass
class NoisedSamples(Collected):
    """The epoch's clean samples, each noised `draws` times, with their advantages."""

    prompts: list[str] = field(default_factory=list)  # [B]
    clean: torch.Tensor | None = None  # [B, ...] clean latents
    noise: torch.Tensor | None = None  # [B, D, ...]
    t: torch.Tensor | None = None  # [B, D] model timesteps
    sigma: torch.Tensor | None = None  # [B, D]
    advantages: torch.Tensor | None = None  # [B]
    group_ids: torch.Tensor | None = None  # [B]
    old: torch.Tensor | None = None  # [B, D, ...] NFT: the old policy's predictions; AWM: [B, D] errors


class ForwardProcess(Algorithm):
    """Sampling, advantages and forward-process noising shared by DiffusionNFT and AWM."""

    def __init__(self, context):
        super().__init__(context)
        if context.settings.kl_coef > 0 and context.config.train.trainable != "lora":
            raise ValueError(
                "algorithm.kl_coef > 0 needs train.trainable=lora (the reference is the LoRA off)"
            )
        if context.config.train.group_size < 2:
            raise ValueError(
                f"{context.settings.name} compares samples of a prompt: set train.group_size >= 2"
            )

    def sampling_policy(self):
        """The weights that sample (and whose predictions the losses compare against)."""
        return nullcontext()

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        context, settings, config = self.context, self.context.settings, self.context.config
        adapter = context.adapter
        generators = generators_from_seeds(seeds)

        def sample_part(rows: slice):
            with self.sampling_policy(), context.accelerator.autocast():
                part = adapter.sample(prompts[rows], generators[rows], num_steps=config.sampling.num_steps)
                return part, adapter.decode(part.final).float()

        trajectory, images, values, seconds = sample_and_score(context, prompts, sample_part)
        signal = context.rewards.combine(values, group_ids)
        everything, zero_std = group_advantages(
            context.gather(signal), context.gather(group_ids), std_over=settings.advantage_std
        )
        advantages = context.local_slice(everything).clamp(-settings.advantage_clip, settings.advantage_clip)
        clean = trajectory.final.detach().float()
        batch = len(prompts)
        generator = torch.Generator().manual_seed(config.train.seed * 1_000_033 + epoch)
        t, sigma = adapter.training_times(
            batch * settings.draws, generator, within=tuple(settings.time_range)
        )
        noise = torch.randn((batch * settings.draws, *clean.shape[1:]), generator=generator).to(clean.device)
        samples = NoisedSamples(
            prompts=list(prompts),
            clean=clean,
            noise=noise.view(batch, settings.draws, *clean.shape[1:]),
            t=t.view(batch, settings.draws),
            sigma=sigma.view(batch, settings.draws),
            advantages=advantages,
            group_ids=group_ids.cpu(),
            values=values,
            images=images,
        )
        with self.sampling_policy():
            samples.old = self.old_outputs(samples)
        samples.stats = {
            "reward": float(signal.mean()),
            "zero_std_fraction": zero_std,
            "advantage_abs_mean": float(advantages.abs().mean()),
            **seconds,
        }
        return samples

    def old_outputs(self, samples: NoisedSamples):
        """What the losses compare against, under the sampling policy; None when nothing."""
        return None

    def micro_batches(self, batch, generator):
        size = self.context.config.train.micro_batch_size
        order = torch.randperm(len(batch.prompts), generator=generator)
        draws = batch.noise.shape[1]
        return [(order[i : i + size], d) for d in range(draws) for i in range(0, len(order), size)]

    def predict(self, batch, rows, draw):
        """(model output, target, noised latents, sigma) for the unit's rows at their `draw`-th noise,
        without guidance (training runs the conditional model, as pretraining does)."""
        adapter = self.context.adapter
        x0, noise = batch.clean[rows], batch.noise[rows, draw]
        t, sigma = batch.t[rows, draw], batch.sigma[rows, draw]
        noised = adapter.add_noise(x0, noise, sigma)
        cond = adapter.encode([batch.prompts[int(i)] for i in rows])
        with adapter.conditional(), self.context.accelerator.autocast():
            output = adapter.denoise(noised, t, cond)
        return output.float(), adapter.training_target(x0, noise, sigma), noised, sigma

    def reference_term(self, batch, rows, draw, output, stats):
        """kl_coef x mean((v - v_ref)^2), the reference being the LoRA disabled; 0 when kl_coef is 0."""
        settings = self.context.settings
        if settings.kl_coef == 0:
            return 0.0
        with torch.no_grad(), self.context.policy.reference():
            reference = self.predict(batch, rows, draw)[0]
        distance = matching_error(output, reference).mean()
        stats["reference_distance"] = float(distance.detach())
        return settings.kl_coef * distance

    def _outputs_by_draw(self, samples: NoisedSamples, reduce) -> torch.Tensor:
        """reduce(output, target, noised, sigma) of every sample at every draw, stacked [B, D, ...]."""
        size = self.context.config.train.micro_batch_size
        rows = torch.arange(len(samples.prompts))
        per_draw = []
        for draw in range(samples.noise.shape[1]):
            chunks = [
                reduce(*self.predict(samples, rows[i : i + size], draw)) for i in range(0, len(rows), size)
            ]
            per_draw.append(torch.cat(chunks))
        return torch.stack(per_draw, 1)


class DiffusionNFT(ForwardProcess):
    def __init__(self, context):
        super().__init__(context)
        self.old_state: dict[str, torch.Tensor] | None = None  # the old (sampling) policy's weights
        self.epochs_seen = 0

    def sampling_policy(self):
        return self.context.policy.swapped(self.old_state)

    def decay(self, epoch: int) -> float:
        settings = self.context.settings
        return min(settings.old_decay_max, epoch * settings.old_decay_rate)

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        current = self.context.policy.trainable_state()
        if self.old_state is None:
            self.old_state = current
        else:  # the old policy follows the trained one: old <- decay old + (1 - decay) current
            decay = self.decay(epoch)
            for name, value in current.items():
                self.old_state[name].mul_(decay).add_(value, alpha=1 - decay)
        samples = super().collect(epoch, prompts, group_ids, seeds)
        samples.stats["old_decay"] = self.decay(epoch)
        return samples

    def old_outputs(self, samples):
        return self._outputs_by_draw(samples, lambda output, *_: output)

    def loss(self, batch, unit):
        rows, draw = unit
        settings = self.context.settings
        output, target, noised, sigma = self.predict(batch, rows, draw)
        optimality = (batch.advantages[rows] / settings.advantage_clip).clamp(-1, 1) / 2 + 0.5
        to_clean = (
            (lambda prediction: predicted_clean(self.context.adapter, prediction, noised, sigma))
            if settings.adaptive_weight
            else None
        )
        loss, stats = nft_loss(
            output,
            batch.old[rows, draw],
            target,
            optimality,
            settings.beta,
            to_clean=to_clean,
            adaptive=settings.adaptive_weight,
        )
        loss = loss + self.reference_term(batch, rows, draw, output, stats)
        stats["policy_loss"] = float(loss.detach())
        return loss, stats

    def state_dict(self):
        return {"old_state": self.old_state}

    def load_state_dict(self, state):
        old = state.get("old_state")
        self.old_state = None if old is None else {k: v.clone() for k, v in old.items()}


class AWM(ForwardProcess):
    def old_outputs(self, samples):
        if self.context.settings.clip_range is None:
            return None

        return self._outputs_by_draw(samples, lambda output, target, *_: matching_error(output, target))

    def loss(self, batch, unit):
        rows, draw = unit
        settings = self.context.settings
        output, target, _, sigma = self.predict(batch, rows, draw)
        weights = sigma.float() if settings.weighting == "sigma" else None
        old = None if batch.old is None else batch.old[rows, draw]
        loss, stats = awm_loss(output, target, batch.advantages[rows], weights, old, settings.clip_range)
        loss = loss + self.reference_term(batch, rows, draw, output, stats)
        stats["policy_loss"] = float(loss.detach())
        return loss, stats


class DGPO(ForwardProcess):
    """Group preference on the forward process (align.losses.dgpo_loss): whole groups per unit."""

    def __init__(self, context):
        super().__init__(context)
        if context.config.train.trainable != "lora":
            raise ValueError(
                "dgpo compares against the reference, the LoRA disabled: set train.trainable=lora"
            )

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        samples = super().collect(epoch, prompts, group_ids, seeds)
        if self.context.settings.shared_noise:  # every member takes its group's first member's noise and time
            first = {}
            for row, group in enumerate(samples.group_ids.tolist()):
                first.setdefault(group, row)
            source = torch.tensor([first[g] for g in samples.group_ids.tolist()])
            samples.noise, samples.t, samples.sigma = (
                samples.noise[source.to(samples.noise.device)],
                samples.t[source.to(samples.t.device)],
                samples.sigma[source.to(samples.sigma.device)],
            )
        return samples

    def micro_batches(self, batch, generator):
        """Micro-batches of whole groups (shuffled), for every draw."""
        groups = batch.group_ids
        distinct = groups.unique()
        order = distinct[torch.randperm(len(distinct), generator=generator)]
        per_unit = max(1, self.context.config.train.micro_batch_size // int((groups == distinct[0]).sum()))
        chunks = [order[i : i + per_unit] for i in range(0, len(order), per_unit)]
        rows = [torch.cat([(groups == g).nonzero().flatten() for g in chunk]) for chunk in chunks]
        return [(r, d) for d in range(batch.noise.shape[1]) for r in rows]

    def loss(self, batch, unit):
        rows, draw = unit
        settings = self.context.settings
        output, target, _, _ = self.predict(batch, rows, draw)
        errors = matching_error(output, target)
        with torch.no_grad(), self.context.policy.reference():
            reference, _, _, _ = self.predict(batch, rows, draw)
        reference_errors = matching_error(reference, target)
        loss, stats = dgpo_loss(
            errors, reference_errors, batch.advantages[rows], batch.group_ids[rows], settings.beta
        )
        loss = loss + self.reference_term(batch, rows, draw, output, stats)
        stats["policy_loss"] = float(loss.detach())
        return loss, stats


register_algorithm("diffusion-nft", DiffusionNFTConfig)(DiffusionNFT)
register_algorithm("dgpo", DGPOConfig)(DGPO)
register_algorithm("awm", AWMConfig)(AWM)
