"""Stochastic rollouts with per-step log-probs: what Flow-GRPO, DDPO, D3PO and PRDP sample and re-score.

A rollout runs the flow SDE (or DDIM with eta for UNets) on a window of steps and the ODE elsewhere,
keeps every step's log-prob, scores the final images, and draws which stochastic steps train. The
algorithms built on it differ only in how rewards become a loss: PPO's clipped surrogate on
advantages (policy_gradient.py), DPO on pairs of transitions (trajectory_dpo.py), a regression of
reward gaps on log-ratios (prdp.py).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch

from align.algorithms.base import Algorithm, saved_bytes
from align.algorithms.policy_gradient_config import SDEWindow
from align.algorithms.scoring import sample_and_score
from align.shaping import mean_group_std
from samplers.noise import generators_from_seeds

# A step that starts below this sigma stays deterministic: its SDE noise (std ~ noise_level * sigma) is
# far below what changes a pixel, so it carries no credit, while its log-prob gradient, which grows as
# 1 / std, is the largest of the chain. (Flow schedules end with such a step: sigma 0.001 -> 0.)
MIN_STOCHASTIC_SIGMA = 0.01


def noise_levels(window: SDEWindow, level: float, sigmas: list[float], epoch: int, rng: random.Random):
    """[T] noise level per step: `level` on the stochastic window, 0 (ODE) elsewhere and on every step
    starting below MIN_STOCHASTIC_SIGMA. sigmas [T + 1]: the schedule's."""
    num_steps = len(sigmas) - 1
    live = [i for i in range(num_steps) if sigmas[i] >= MIN_STOCHASTIC_SIGMA]
    if window.size == 0 or window.size >= len(live):
        chosen = set(live)
    else:
        lo, hi = window.starts or (0, len(live) - window.size + 1)
        hi = min(hi, len(live) - window.size + 1)
        if window.slide_every:
            start = lo + (epoch // window.slide_every) % max(1, hi - lo)
        else:
            start = rng.randrange(lo, max(lo + 1, hi))
        chosen = set(live[start : start + window.size])
    return [level if i in chosen else 0.0 for i in range(num_steps)]


@dataclass
class Sampled:
    """One epoch's stochastic rollouts, scored: the trajectory, images, raw rewards, the noise level of
    every step, the stochastic steps, the trained steps [B, K] and the timings."""

    trajectory: object
    images: torch.Tensor
    values: dict
    levels: list[float]
    stochastic: list[int]
    steps: torch.Tensor
    graph: bool
    seconds: dict

    def stats(self, signal: torch.Tensor, group_ids: torch.Tensor) -> dict:
        """What every method on these rollouts logs: the mean and in-group spread of `signal` (the
        combined reward it learns from), whether the sampling graph was kept, the timings and the window."""
        return {
            "reward": float(signal.mean()),
            "reward_std_in_groups": mean_group_std(signal, group_ids),
            "rollout_graph": float(self.graph),
            **self.seconds,
            "noise_window": self.stochastic,
        }

    def batch(self, kind, stats: dict, **fields):
        """The collected batch of class `kind` (Rollouts or a subclass) on these rollouts."""
        return kind(
            stats=stats,
            values=self.values,
            images=self.images,
            trajectory=self.trajectory,
            steps=self.steps,
            **fields,
        )


class StochasticRollouts(Algorithm):
    """Sampling and re-scoring shared by the algorithms that train on the sampler's own transitions.
    Settings read: window, timestep_fraction, log_prob_reduction, shared_initial_noise, cfg_gradient
    (and rollout_graph_mb where the config has it)."""

    def __init__(self, context):
        super().__init__(context)
        if context.rewards.trainable and getattr(context.settings, "reference_images", None) is None:
            raise ValueError(
                "a trainable reward (discriminator) needs algorithm.reference_images (use adv-grpo)"
            )
        self.noise_scales: dict[int, float] = {}  # DenseGRPO calibration: step index -> noise scale
        self.row_call_bytes: int | None = None  # rollout_graph_mb: one row's activations of one call

    @torch.no_grad()
    def sample(self, epoch, prompts, group_ids, seeds) -> Sampled:
        context, settings = self.context, self.context.settings
        config, adapter = context.config, context.adapter
        num_steps = config.sampling.num_steps
        rng = random.Random(config.train.seed * 1_000_003 + epoch)
        sigmas = adapter.schedule(num_steps).sigmas.tolist()
        levels = noise_levels(settings.window, config.sampling.noise_level, sigmas, epoch, rng)
        levels = [level * self.noise_scales.get(i, 1.0) for i, level in enumerate(levels)]
        generators, noise = generators_from_seeds(seeds), None
        if settings.shared_initial_noise:
            # x_T from the group's first seed, the SDE noise from each sample's own (offset) seed: the
            # rewards of a group then differ only by what the policy drew, so the credit is the policy's.
            first: dict[int, int] = {}
            for group, seed in zip(group_ids.tolist(), seeds):
                first.setdefault(group, seed)
            noise = adapter.initial_noise(
                generators_from_seeds([first[g] for g in group_ids.tolist()]), len(seeds), num_steps
            )
            generators = generators_from_seeds([seed + 7_777_777 for seed in seeds])
        graph = self._rollout_graph(prompts, num_steps, levels)

        def sample_part(rows: slice):
            with context.accelerator.autocast():
                with torch.set_grad_enabled(graph), self.guidance() if graph else contextlib.nullcontext():
                    part = adapter.sample(
                        prompts[rows],
                        generators[rows],
                        num_steps=num_steps,
                        noise_levels=levels,
                        noise=None if noise is None else noise[rows],
                        graph=graph,
                    )
                return part, adapter.decode(part.final).float()

        trajectory, images, values, seconds = sample_and_score(context, prompts, sample_part)
        stochastic = [i for i, level in enumerate(levels) if level > 0]
        if not stochastic:
            raise ValueError("sampling.noise_level is 0: no stochastic step to train; set it above 0")
        count = max(1, round(len(stochastic) * settings.timestep_fraction))
        generator = torch.Generator().manual_seed(config.train.seed * 7919 + epoch)
        steps = torch.stack(
            [
                torch.tensor(stochastic)[torch.randperm(len(stochastic), generator=generator)[:count]]
                for _ in prompts
            ]
        )
        return Sampled(trajectory, images, values, levels, stochastic, steps, graph, seconds)

    def guidance(self):
        """cfg_gradient: conditional holds the unconditional prediction constant in the update (the
        Flow-GRPO reference's choice); both trains both branches."""
        if self.context.settings.cfg_gradient == "conditional":
            return self.context.adapter.detached_unconditional()
        return contextlib.nullcontext()

    def rescore(self, trajectory, steps):
        """The current policy's step distribution at the trained steps (with gradients)."""
        with self.context.accelerator.autocast(), self.guidance():
            return self.context.adapter.rescore(trajectory, steps)

    @torch.no_grad()
    def reference_rescore(self, trajectory, steps):
        """The reference policy's (the LoRA off) step distribution at the trained steps, no gradients."""
        with self.context.policy.reference(), self.context.accelerator.autocast():
            return self.context.adapter.rescore(trajectory, steps)

    def log_prob_scale(self, trajectory) -> float:
        """Per-dimension (mean) or summed log-probs."""
        return (
            1.0 / trajectory.latents[0, 0].numel()
            if self.context.settings.log_prob_reduction == "mean"
            else 1.0
        )

    def _rollout_graph(self, prompts, num_steps: int, levels: list[float]) -> bool:
        """Sample with the graph kept (rollout_graph_mb)? Only where every unit of the first pass
        trains before the one optimiser step (steps_per_pass 1, one process: under DDP each forward
        would expect its own backward) and the stochastic steps' activations, estimated once from
        one row of one denoiser call, fit under the limit."""
        context = self.context
        limit = getattr(context.settings, "rollout_graph_mb", 0.0)
        if limit == 0 or context.config.train.steps_per_pass != 1 or context.accelerator.num_processes != 1:
            return False
        if self.row_call_bytes is None:  # measured once: neither the step nor the prompt changes it
            adapter = context.adapter
            x = adapter.initial_noise(generators_from_seeds([0]), 1, num_steps)
            t = adapter.schedule(num_steps).timesteps[:1].to(x.device).float()
            with context.accelerator.autocast(), adapter.eager():
                self.row_call_bytes = saved_bytes(adapter.denoise, x, t, adapter.encode(prompts[:1]))
        stochastic = sum(1 for level in levels if level > 0)
        return len(prompts) * stochastic * self.row_call_bytes <= limit * 2**20
