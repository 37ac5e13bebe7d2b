"""Pure step functions with log-probs, rollouts, and diffusers pipeline adapters."""

from samplers.ddim import ddim_step, ddpm_step
from samplers.flow import flow_step
from samplers.noise import draw_noise, gaussian_log_prob, generators_from_seeds

__all__ = ["ddim_step", "ddpm_step", "draw_noise", "flow_step", "gaussian_log_prob", "generators_from_seeds"]
