"""Stable Diffusion 1.x / 2.x (UNet, epsilon or v-prediction), sampled with DDIM as DDPO does."""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

from samplers.adapters.base import Adapter
from samplers.ddim import ddim_step
from samplers.types import Cond, Schedule


class UNetMixin:
    """Schedule, step and decode of the VP-diffusion UNet families (SD 1.x/2.x, SDXL).

    The step coordinate is sigma = sqrt(1 - alphabar_t). The pipeline's own scheduler is swapped for
    DDIM (same training schedule) unless the family keeps its own, as the turbo family does.
    """

    family = "unet"
    keeps_scheduler = False

    def _use_ddim(self) -> None:
        scheduler = self.pipeline.scheduler
        if not self.keeps_scheduler and not isinstance(scheduler, DDIMScheduler):
            self.pipeline.scheduler = DDIMScheduler.from_config(scheduler.config)

    @property
    def model(self):
        return self.pipeline.unet

    def default_resolution(self) -> int:
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    def latent_shape(self):
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.model.config.in_channels, size, size)

    def step(self, model_output, x, sigma, sigma_next, **kwargs):
        config = self.pipeline.scheduler.config
        clip = config.get("clip_sample_range", 1.0) if config.get("clip_sample", False) else None
        return ddim_step(
            model_output,
            x,
            sigma,
            sigma_next,
            prediction_type=config.get("prediction_type", "epsilon"),
            clip_sample_range=clip,
            **kwargs,
        )

    def training_times(
        self, batch: int, generator: torch.Generator | None = None, within: tuple[float, float] = (0.0, 1.0)
    ):
        """(t [B], sigma [B]): uniform integer training timesteps in the fraction `within` of the
        schedule, and their VP sigma."""
        scheduler = self.pipeline.scheduler
        steps = scheduler.config.num_train_timesteps
        lo = int(within[0] * steps)
        hi = min(steps, max(lo + 1, math.ceil(within[1] * steps)))
        t = torch.randint(lo, hi, (batch,), generator=generator)
        sigma = (1 - scheduler.alphas_cumprod[t].to(torch.float64)).sqrt().float()
        return t.to(self.device), sigma.to(self.device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.pipeline.scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
            sigma = sigma.float().view(-1, *([1] * (x0.ndim - 1)))
            return (1 - sigma**2).sqrt() * noise - sigma * x0
        return noise

    def encode_images(self, images):
        vae = self.pipeline.vae
        latents = vae.encode((images * 2 - 1).to(vae.dtype)).latent_dist.mean.float()
        return latents * vae.config.scaling_factor

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_sigma = sqrt(1 - sigma^2) x0 + sigma noise (VP); sigma [B]."""
        sigma = sigma.float().view(-1, *([1] * (x0.ndim - 1)))
        return (1 - sigma**2).sqrt() * x0 + sigma * noise

    def schedule(self, num_steps: int) -> Schedule:
        """The scheduler's timesteps; sigma_T+1 follows DDIM's `t - num_train_timesteps // steps` rule.

        Consistent chains (each step lands on the next step's timestep) hold for the "leading" and
        "trailing" spacings every Stable Diffusion config uses.
        """
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(num_steps)  # on the host: the tables are made there, then moved once
        timesteps = scheduler.timesteps.clone()
        abar = scheduler.alphas_cumprod.to(torch.float64)
        last_previous = int(timesteps[-1]) - scheduler.config.num_train_timesteps // num_steps
        final = (
            abar[last_previous] if last_previous >= 0 else torch.tensor(float(scheduler.final_alpha_cumprod))
        )
        abars = torch.cat([abar[timesteps.long()], final.to(torch.float64).view(1)])
        return Schedule(timesteps=timesteps.to(self.device), sigmas=(1 - abars).sqrt().to(self.device))

    def decode(self, latents):
        vae = self.pipeline.vae
        latents = latents / vae.config.scaling_factor
        return self.postprocess(vae.decode(latents.to(vae.dtype), return_dict=False)[0])

    def _guided(self, x, t, call):
        """Classifier-free guidance around `call(x, t, negative: bool)`."""
        if self.guidance_scale <= 1:
            return call(x, t, False)
        uncond, text = call(torch.cat([x, x]), torch.cat([t, t]), True).chunk(2)
        return self.guide(uncond, text)

    def _scaled_input(self, x):
        return x.to(self.dtype)

    def pipeline_images(self, prompts, generators, num_steps, cond=None):
        return self._pipeline_call(prompts, generators, num_steps, cond).images.float()


class SDAdapter(UNetMixin, Adapter):
    default_steps = 50
    default_guidance = 7.5

    def __init__(self, pipeline, **kwargs):
        self.pipeline = pipeline
        self._use_ddim()
        super().__init__(pipeline, **kwargs)

    def frozen_modules(self):
        return [self.pipeline.vae, self.pipeline.text_encoder]

    def encode_batch(self, prompts: list[str]) -> Cond:
        embeds, negative = self.pipeline.encode_prompt(
            prompts, self.device, 1, do_classifier_free_guidance=True
        )
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}

    def denoise(self, x, t, cond):
        def call(x, t, with_negative):
            embeds = cond["prompt_embeds"]
            if with_negative:
                embeds = torch.cat([cond["negative_prompt_embeds"], embeds])
            return self.network(self._scaled_input(x), t, encoder_hidden_states=embeds, return_dict=False)[0]

        return self._guided(x, t, call)
