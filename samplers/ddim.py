"""Reverse steps for UNet diffusion models (VP process): DDIM with eta and DDPM ancestral.

Parameterisation: x_t = sqrt(1 - sigma^2) x_0 + sigma * eps, i.e. sigma = sqrt(1 - alphabar_t).
The model predicts eps ("epsilon") or v = alpha eps - sigma x_0 ("v_prediction").
Adapted from the DDIM formulation of diffusers `schedulers/scheduling_ddim.py` and DDPO's
`ddim_step_with_logprob`; changes: pure function of (sigma, sigma_next) with per-sample values,
coefficients in float64, log-probs summed (exact density) rather than averaged.
"""

from __future__ import annotations

import torch

from samplers.noise import Generators, draws_noise, expand_as_batch, finish_step, per_sample
from samplers.types import StepOut


def predict_x0_eps(model_output, x, alpha, sigma, prediction_type: str):
    """(x_0, eps) predictions from the model output; alpha, sigma are float32 [B, 1, ...] views."""
    if prediction_type == "epsilon":
        return (x - sigma * model_output) / alpha, model_output
    if prediction_type == "v_prediction":
        return alpha * x - sigma * model_output, alpha * model_output + sigma * x
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use 'epsilon' or 'v_prediction'")


def ddim_step(
    model_output: torch.Tensor,
    x: torch.Tensor,
    sigma,
    sigma_next,
    *,
    noise_level=0.0,
    prev: torch.Tensor | None = None,
    generator: Generators = None,
    prediction_type: str = "epsilon",
    clip_sample_range: float | None = None,
) -> StepOut:
    """DDIM (Song et al. 2021, eq. 12) with eta = noise_level; eta = 1 is DDPM's posterior.

    x_0^, eps^ from the model;  var = (1 - a_prev)/(1 - a) (1 - a / a_prev),  std = eta sqrt(var)
    mean = sqrt(a_prev) x_0^ + sqrt(1 - a_prev - std^2) eps^          (a = alphabar = 1 - sigma^2)
    """
    batch = x.shape[0]
    x = x.float()
    model_output = model_output.float()
    sigma = per_sample(sigma, batch, x.device)
    sigma_next = per_sample(sigma_next, batch, x.device)
    eta = per_sample(noise_level, batch, x.device)
    abar, abar_next = 1 - sigma**2, 1 - sigma_next**2
    x0, eps = predict_x0_eps(
        model_output, x, expand_as_batch(abar.sqrt(), x), expand_as_batch(sigma, x), prediction_type
    )
    if clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    variance = (1 - abar_next) / (1 - abar) * (1 - abar / abar_next)
    std64 = eta * variance.clamp(min=0).sqrt()
    direction = (1 - abar_next - std64**2).clamp(min=0).sqrt()
    mean = expand_as_batch(abar_next.sqrt(), x) * x0 + expand_as_batch(direction, x) * eps
    return finish_step(mean, std64.to(torch.float32), prev, generator, draws_noise(noise_level))


def ddpm_step(
    model_output: torch.Tensor,
    x: torch.Tensor,
    sigma,
    sigma_next,
    *,
    noise_level=1.0,
    prev: torch.Tensor | None = None,
    generator: Generators = None,
    prediction_type: str = "epsilon",
    clip_sample_range: float | None = None,
    variance_type: str = "fixed_small",
) -> StepOut:
    """DDPM ancestral step (Ho et al. 2020, eq. 6-7) through the posterior q(x_prev | x_t, x_0^).

        beta = 1 - a / a_prev
        mean = sqrt(a_prev) beta / (1 - a) x_0^ + sqrt(a / a_prev) (1 - a_prev) / (1 - a) x_t
        var  = (1 - a_prev) / (1 - a) beta  ("fixed_small")  or  beta  ("fixed_large")
    std is noise_level * sqrt(var); with fixed_small and noise_level 1 this equals ddim_step at eta 1.
    """
    batch = x.shape[0]
    x = x.float()
    model_output = model_output.float()
    sigma = per_sample(sigma, batch, x.device)
    sigma_next = per_sample(sigma_next, batch, x.device)
    level = per_sample(noise_level, batch, x.device)
    abar, abar_next = 1 - sigma**2, 1 - sigma_next**2
    x0, _ = predict_x0_eps(
        model_output, x, expand_as_batch(abar.sqrt(), x), expand_as_batch(sigma, x), prediction_type
    )
    if clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    beta = 1 - abar / abar_next
    x0_coef = abar_next.sqrt() * beta / (1 - abar)
    xt_coef = (abar / abar_next).sqrt() * (1 - abar_next) / (1 - abar)
    mean = expand_as_batch(x0_coef, x) * x0 + expand_as_batch(xt_coef, x) * x
    if variance_type == "fixed_small":
        variance = (1 - abar_next) / (1 - abar) * beta
    elif variance_type == "fixed_large":
        variance = beta
    else:
        raise ValueError(f"unknown variance_type {variance_type!r}; use 'fixed_small' or 'fixed_large'")
    std64 = level * variance.clamp(min=0).sqrt()
    return finish_step(mean, std64.to(torch.float32), prev, generator, draws_noise(noise_level))
