"""One-step (turbo) models: SD-Turbo and SDXL-Turbo, adversarially distilled UNets.

They ship an Euler scheduler with "trailing" spacing and run with guidance 0. Euler on the VE
coordinates x_ve = x / sqrt(abar) is DDIM on the VP coordinates, so the turbo adapters keep
DDIM steps and only translate the schedule: sigma_vp = sigma_ve / sqrt(1 + sigma_ve^2), and the
pipeline's x_T = sigma_max * noise becomes x_T / sqrt(1 + sigma_max^2) (the model input it sees).
"""

from __future__ import annotations

import torch

from samplers.adapters.sd import SDAdapter
from samplers.adapters.sdxl import SDXLAdapter
from samplers.types import Schedule


class TurboMixin:
    keeps_scheduler = True
    default_steps = 1
    default_guidance = 0.0

    def schedule(self, num_steps: int) -> Schedule:
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(num_steps, device=self.device)
        sigma_ve = scheduler.sigmas.to(torch.float64)
        return Schedule(timesteps=scheduler.timesteps.clone(), sigmas=sigma_ve / (1 + sigma_ve**2).sqrt())

    def noise_scale(self, num_steps: int) -> float:
        """The pipeline draws x_T = init_noise_sigma * noise: sigma_max for "linspace"/"trailing"
        spacing, sqrt(1 + sigma_max^2) otherwise; in VP coordinates that is sigma_vp_max or 1."""
        if self.pipeline.scheduler.config.timestep_spacing in ("linspace", "trailing"):
            return float(self.schedule(num_steps).sigmas[0])
        return 1.0


class SDTurboAdapter(TurboMixin, SDAdapter):
    """SD-Turbo (an SD 2.1 UNet)."""


class SDXLTurboAdapter(TurboMixin, SDXLAdapter):
    """SDXL-Turbo."""
