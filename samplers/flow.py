"""Flow-matching reverse steps: the Euler ODE step and the Flow-GRPO SDE step.

Parameterisation (rectified flow, SD3 / FLUX): x_sigma = (1 - sigma) x_0 + sigma * eps, and the model
predicts the velocity v = eps - x_0. Sigma runs from 1 (noise) down to 0 (data).
"""

from __future__ import annotations

import torch

from samplers.noise import Generators, draws_noise, expand_as_batch, finish_step, per_sample
from samplers.types import StepOut


def flow_step(
    model_output: torch.Tensor,
    x: torch.Tensor,
    sigma,
    sigma_next,
    *,
    noise_level=0.0,
    prev: torch.Tensor | None = None,
    generator: Generators = None,
) -> StepOut:
    """One step x_sigma -> x_sigma_next.

    noise_level = 0 is the Euler ODE step `x + (sigma_next - sigma) * v`, bit for bit. Otherwise it is
    the reverse-time SDE with the same marginals (Flow-GRPO, Liu et al. 2025, eq. 9):

        mean = x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt
        std  = s sqrt(-dt),     s = noise_level * sqrt(sigma / (1 - sigma)),   dt = sigma_next - sigma

    At sigma = 1 the factor sigma / (1 - sigma) is infinite; as Flow-GRPO does, the denominator then
    uses the next sigma of the schedule. Given `prev`, that sample is scored instead of drawn.
    Shapes: model_output, x [B, ...]; sigma, sigma_next, noise_level scalars or [B].
    """
    batch = x.shape[0]
    v = model_output.float()
    x = x.float()
    sigma = per_sample(sigma, batch, x.device)
    sigma_next = per_sample(sigma_next, batch, x.device)
    level = per_sample(noise_level, batch, x.device)
    dt = sigma_next - sigma
    denominator = 1 - torch.where(sigma >= 1, sigma_next, sigma)
    s = level * torch.sqrt(sigma / denominator)
    x_coef = 1 + s**2 * dt / (2 * sigma)
    v_coef = (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    mean = x * expand_as_batch(x_coef, x) + v * expand_as_batch(v_coef, x)
    std = (s * torch.sqrt(-dt)).to(torch.float32)
    return finish_step(mean, std, prev, generator, draws_noise(noise_level))


def cps_step(
    model_output: torch.Tensor,
    x: torch.Tensor,
    sigma,
    sigma_next,
    *,
    noise_level=0.0,
    prev: torch.Tensor | None = None,
    generator: Generators = None,
) -> StepOut:
    """Coefficients-preserving sampling (Wang et al. 2025): x_sigma -> x_sigma_next keeping the
    forward process's coefficients, so that the sample is exactly as noisy as the schedule says.

    From the model's estimates x0^ = x - sigma v and eps^ = x + (1 - sigma) v, with
    std = sigma_next sin(noise_level pi / 2):

        mean = (1 - sigma_next) x0^ + sqrt(sigma_next^2 - std^2) eps^,     x_next = mean + std z

    The noise coefficients add up as the schedule's, (sigma_next^2 - std^2) + std^2 = sigma_next^2,
    where the Flow-GRPO SDE step (flow_step) adds its noise on top of a drift that was derived in
    continuous time and, at coarse steps and large noise levels, leaves x_next noisier than
    sigma_next. noise_level 0 is the Euler ODE step; 1 replaces all the noise with fresh noise.
    Shapes and `prev` as flow_step's.
    """
    batch = x.shape[0]
    v = model_output.float()
    x = x.float()
    sigma = per_sample(sigma, batch, x.device)
    sigma_next = per_sample(sigma_next, batch, x.device)
    level = per_sample(noise_level, batch, x.device)
    std = sigma_next * torch.sin(level * torch.pi / 2)
    kept = torch.sqrt((sigma_next**2 - std**2).clamp(min=0))
    clean = x - expand_as_batch(sigma, x) * v
    noise = x + expand_as_batch(1 - sigma, x) * v
    mean = expand_as_batch(1 - sigma_next, x) * clean + expand_as_batch(kept, x) * noise
    return finish_step(mean, std.to(torch.float32), prev, generator, draws_noise(noise_level))


FLOW_STEPS = {"flow-grpo": flow_step, "cps": cps_step}  # sampling.sde: the stochastic step of flow models
