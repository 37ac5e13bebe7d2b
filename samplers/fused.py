"""One fused step for every sampler family: the update, the noise and the Gaussian log-prob in a
function of tensors alone, which `torch.compile(fullgraph=True, dynamic=False)` compiles whole.

Every step this project samples with (the flow SDE, CPS, DDIM at any eta, DDPM ancestral, for
epsilon and v prediction) has a mean that is linear in the current latent and the model's output:

    mean_i = a_i x + b_i output,        x_next = mean_i + std_i z,        z ~ N(0, I)

with a_i, b_i, std_i depending only on the schedule and the noise level. `step_tables` reads them off
the family's own step function once per rollout, by evaluating it at (x, output) = (1, 0) and (0, 1)
for all T steps at once (float64 inside the step, float32 tables on the rollout's device), so the
fused step and the family's step cannot drift apart; `fused_step` is then three multiply-adds and a
log-prob, on tensors the rollout preallocated: nothing in it reads the host or depends on Python
values that change from step to step (step i's coefficients are indexed on the device). The one
exception to linearity, a DDIM scheduler's `clip_sample` clamp of the x_0 prediction, keeps its
family's own step (`linear` is False).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from samplers.noise import draw_noise, gaussian_log_prob
from samplers.types import StepOut

KERNELS = ("family", "fused", "compiled")


@dataclass
class StepTables:
    """[T] float32 coefficients of every step, on the rollout's device."""

    a: torch.Tensor  # of x_t in the mean
    b: torch.Tensor  # of the model output in the mean
    std: torch.Tensor  # of the noise


def step_tables(step_fn, sigmas: torch.Tensor, levels: list[float]) -> StepTables | None:
    """The tables of `step_fn` over a schedule (sigmas [T + 1]) at `levels` [T], or None where the
    step is not linear in (x, output) (checked: the mean at (1, 1) must be a + b, and at (s, s) for a
    large s, s (a + b))."""
    count = len(levels)
    device = sigmas.device
    sigma, sigma_next = sigmas[:-1].float(), sigmas[1:].float()
    level = torch.tensor(levels, dtype=torch.float64, device=device)
    zero, one = torch.zeros(count, 1, device=device), torch.ones(count, 1, device=device)

    def mean(x, output):
        return step_fn(output, x, sigma, sigma_next, noise_level=level, prev=x).mean.flatten()

    a, b, both = mean(one, zero), mean(zero, one), mean(one, one)
    scale = 1e4  # a clamp of the x_0 prediction (DDIM's clip_sample) shows at this size, if not at 1
    large = mean(scale * one, scale * one)
    if not (torch.allclose(both, a + b, rtol=1e-5, atol=1e-6) and torch.allclose(large, scale * (a + b), rtol=1e-4)):
        return None
    std = step_fn(zero, zero, sigma, sigma_next, noise_level=level, prev=zero).std.flatten()
    return StepTables(a=a.float(), b=b.float(), std=std.float())


def fused_step(x, output, noise, a, b, std):
    """(x_next, mean, log_prob) of one step: `a`, `b`, `std` are 0-d (step i's table entries), x and
    output [B, ...], noise [B, ...] standard normal (zeros at a deterministic step)."""
    mean = a * x.float() + b * output.float()
    sample = mean + std * noise
    return sample, mean, gaussian_log_prob(sample, mean, std.expand(x.shape[0]))


@functools.cache
def compiled_step():
    """The fused step through torch.compile, made once a process (it caches its graphs by shape)."""
    return torch.compile(fused_step, fullgraph=True, dynamic=False)


def step_kernel(step_fn, sigmas: torch.Tensor, levels: list[float], generators, kernel: str = "family"):
    """The rollout's step i as `step(i, output, x, sigma, sigma_next) -> StepOut`: the family's own
    step function, or (`fused`, `compiled`) its tables and the fused step, drawing the very noise
    the family's step draws (each sample's generator, at the steps whose level is above 0)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown step kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    tables = step_tables(step_fn, sigmas, levels) if kernel != "family" else None
    if tables is None:
        return lambda i, output, x, sigma, sigma_next: step_fn(
            output, x, sigma, sigma_next, noise_level=levels[i], generator=generators
        )
    fused = compiled_step() if kernel == "compiled" else fused_step

    def step(i, output, x, sigma, sigma_next):
        noise = draw_noise(x.shape, generators, x.device) if levels[i] > 0 else torch.zeros_like(x, dtype=torch.float32)
        sample, mean, log_prob = fused(x, output, noise, tables.a[i], tables.b[i], tables.std[i])
        return StepOut(sample=sample, mean=mean, std=tables.std[i].expand(x.shape[0]), log_prob=log_prob)

    return step
