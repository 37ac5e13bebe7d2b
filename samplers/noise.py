"""Per-sample noise and Gaussian log-densities shared by every step function."""

from __future__ import annotations

import math

import torch

from samplers.types import StepOut

Generators = list[torch.Generator] | torch.Generator | None


def generators_from_seeds(seeds: list[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per sample, so a batch reproduces sample by sample."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def draw_noise(
    shape: tuple[int, ...],
    generators: Generators,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of `shape`; with a list of generators, row i comes from generator i.

    Row-wise draws match diffusers' `randn_tensor` with a generator list, so an adapter's first
    latents equal the plain pipeline's for the same seeds.
    """
    if isinstance(generators, list):
        if len(generators) != shape[0]:
            raise ValueError(
                f"got {len(generators)} generators for a batch of {shape[0]}; pass one per sample"
            )
        rows = [
            torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device)
            for g in generators
        ]
        return torch.cat(rows)
    gen_device = generators.device if generators is not None else device
    return torch.randn(shape, generator=generators, device=gen_device, dtype=dtype).to(device)


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(sample; mean, std^2 I) summed over every non-batch dimension.

    sample, mean [B, ...]; std [B]. Rows with std == 0 are deterministic steps and get 0.
    The sample is detached: policy gradients flow through the mean only.
    """
    dims = mean[0].numel()
    deterministic = std <= 0
    safe_std = torch.where(deterministic, torch.ones_like(std), std)
    squared = ((sample.detach() - mean) ** 2).flatten(1).sum(dim=1)
    log_prob = -squared / (2 * safe_std**2) - dims * torch.log(safe_std) - dims * 0.5 * math.log(2 * math.pi)
    return torch.where(deterministic, torch.zeros_like(log_prob), log_prob)


def per_sample(value, batch: int, device) -> torch.Tensor:
    """A python number, 0-d or [B] tensor as a float64 [B] tensor (coefficient math runs in float64)."""
    value = torch.as_tensor(value, dtype=torch.float64, device=device)
    return value.expand(batch) if value.ndim == 0 else value.to(torch.float64)


def expand_as_batch(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] float64 coefficient -> float32 view broadcastable against `like` [B, ...]."""
    return coefficient.to(torch.float32).view(-1, *([1] * (like.ndim - 1)))


def draws_noise(noise_level) -> bool | None:
    """Whether a step at `noise_level` draws noise, decided on the host from a Python number (a
    rollout's levels are); None for a tensor of levels, which finish_step then reads."""
    return noise_level > 0 if isinstance(noise_level, (int, float)) else None


def finish_step(
    mean: torch.Tensor,
    std: torch.Tensor,
    prev: torch.Tensor | None,
    generator: Generators,
    draws: bool | None = None,
) -> StepOut:
    """Draw `mean + std * noise` (or take `prev` to score it) and attach its log-prob.

    Noise is drawn only at stochastic steps, so deterministic ones consume no random numbers and a
    noise-free SDE rollout is the ODE rollout bit for bit. `draws` (the host's decision from the
    step's noise level, no device sync) says which they are; without it, a step with any std > 0
    draws (a read of the device). Where the two differ (a level above 0 whose std is 0, as at the
    last step of CPS or of DDIM with a final alpha of 1) the sample is the same: mean + 0 * noise.
    """
    if prev is not None:
        sample = prev.float()
    elif draws if draws is not None else bool((std > 0).any()):
        sample = mean + expand_as_batch(std, mean) * draw_noise(mean.shape, generator, mean.device)
    else:
        sample = mean
    return StepOut(sample=sample, mean=mean, std=std, log_prob=gaussian_log_prob(sample, mean, std))
