"""`align doctor MODEL`: check the sampler invariants of DESIGN.md on any loadable model.

1. the ODE rollout reproduces the plain diffusers pipeline (same prompts, seeds, steps, guidance);
2. the stochastic path at noise_level 0 is the ODE rollout, bit for bit, and draws no random numbers;
3. re-scoring a stochastic trajectory gives importance ratio exactly 1 at every step;
4. a sample does not depend on the batch it was drawn in (beyond float tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samplers.adapters.base import Adapter
from samplers.noise import generators_from_seeds

PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green triangle above a yellow circle",
    "three purple squares",
]
SEEDS = [0, 1, 2, 3]


@dataclass
class Check:
    name: str
    deviation: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.deviation <= self.tolerance


def _tolerance(adapter: Adapter) -> float:
    return 1e-4 if adapter.dtype == torch.float32 else 2e-2


def _generator_states(generators):
    return [g.get_state() for g in generators]


@torch.no_grad()
def run_checks(
    adapter: Adapter, num_steps: int | None = None, noise_level: float | None = None
) -> list[Check]:
    steps = num_steps or adapter.default_steps
    sde_steps = max(steps, 2)  # a one-step chain has no stochastic transition to score
    level = noise_level if noise_level is not None else (0.7 if adapter.family == "flow" else 1.0)
    tolerance = _tolerance(adapter)
    checks = []

    ode = adapter.sample(PROMPTS, generators_from_seeds(SEEDS), num_steps=steps)
    images = adapter.decode(ode.final)
    reference = adapter.pipeline_images(PROMPTS, generators_from_seeds(SEEDS), steps)
    checks.append(
        Check("ODE rollout = diffusers pipeline (max |image diff|)", _max_diff(images, reference), tolerance)
    )

    generators = generators_from_seeds(SEEDS)
    noise = adapter.initial_noise(generators, len(PROMPTS), steps)
    before = _generator_states(generators)
    zero = adapter.sample(PROMPTS, generators, num_steps=steps, noise_levels=[0.0] * steps, noise=noise)
    drew = any(not torch.equal(a, g.get_state()) for a, g in zip(before, generators))
    reference_ode = adapter.sample(PROMPTS, None, num_steps=steps, noise=noise)
    deviation = float("inf") if drew else _max_diff(zero.latents, reference_ode.latents)
    checks.append(Check("SDE at noise_level 0 = ODE (max |latent diff|, exact)", deviation, 0.0))

    sde = adapter.sample(PROMPTS, generators_from_seeds(SEEDS), num_steps=sde_steps, noise_levels=level)
    worst = 0.0
    for step in range(sde.num_steps):
        log_ratio = adapter.rescore(sde, step).log_prob - sde.log_probs[:, step]
        worst = max(worst, float(log_ratio.abs().max()))
    checks.append(Check(f"re-scored ratio = 1 (max |log ratio|, noise {level:g}, exact)", worst, 0.0))

    alone = torch.cat(
        [
            adapter.decode(adapter.sample([p], generators_from_seeds([s]), num_steps=steps).final)
            for p, s in zip(PROMPTS, SEEDS)
        ]
    )
    order = [2, 0, 3, 1]
    shuffled = adapter.sample(
        [PROMPTS[i] for i in order], generators_from_seeds([SEEDS[i] for i in order]), num_steps=steps
    )
    shuffled_images = adapter.decode(shuffled.final)[torch.argsort(torch.tensor(order))]
    deviation = max(_max_diff(alone, images), _max_diff(shuffled_images, images))
    checks.append(Check("batch composition (max |image diff| alone / reordered)", deviation, tolerance))
    return checks


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max())


def format_table(model: str, checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"align doctor {model}", f"{'check':<{width}}  {'deviation':>10}  {'tolerance':>9}  result"]
    for c in checks:
        lines.append(
            f"{c.name:<{width}}  {c.deviation:>10.3g}  {c.tolerance:>9.1g}  {'pass' if c.passed else 'FAIL'}"
        )
    return "\n".join(lines)
