"""Per-sample noise and Gaussian log-densities shared by every step function."""

from __future__ import annotations

import math

import torch

from samplers.types import StepOut

MASK32 = 0xFFFFFFFF


def _mul32(x, constant: int):
    """(x * constant) mod 2^32 for x in [0, 2^32) (an int64 tensor or a Python int), without
    overflowing int64 (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & MASK32


def _hash32(x):
    """A 32-bit integer mix (the "lowbias32" constants): every input bit reaches every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class CounterNoise:
    """Step noise computed on the rollout's device from counters, in one batched computation: element
    j of the k-th draw of sample i is a hash of (seed_i, k, j), two hashes per Box-Muller normal. So
    sample i's noise depends on its own seed alone (not on the batch around it), no generator lives on
    the host, and nothing is copied there or back: `sampling.noise: counter`. The default, one
    torch.Generator per sample, draws the same numbers as diffusers' pipelines do for the same seeds;
    this draws others (as reproducible, and the same on every device)."""

    def __init__(self, seeds, device: torch.device | str = "cpu"):
        self.seeds = torch.tensor([int(s) & MASK32 for s in seeds], dtype=torch.int64, device=device)
        self.draws = 0

    @classmethod
    def from_generators(cls, generators: list[torch.Generator], device) -> CounterNoise:
        """The counters of the samples whose generators these are (their seeds)."""
        return cls([g.initial_seed() for g in generators], device)

    def __len__(self) -> int:
        return self.seeds.shape[0]

    def draw(self, shape: tuple[int, ...], device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if shape[0] != len(self):
            raise ValueError(f"{len(self)} samples' counters for a batch of {shape[0]}")
        count = math.prod(shape[1:])
        draw = _hash32(self.draws * 0x9E3779B9 & MASK32)  # a Python int: no tensor crosses to the device
        self.draws += 1
        key = _hash32(self.seeds.to(device) ^ draw)[:, None]  # [B, 1]
        index = torch.arange(count, device=device, dtype=torch.int64)[None] * 2  # [1, N]
        u1 = (_hash32(key ^ index).double() + 0.5) / 2**32
        u2 = (_hash32(key ^ (index + 1)).double() + 0.5) / 2**32
        normal = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
        return normal.to(dtype).view(shape)


Generators = list[torch.Generator] | torch.Generator | CounterNoise | None


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
    if isinstance(generators, CounterNoise):
        return generators.draw(shape, device, dtype)
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
