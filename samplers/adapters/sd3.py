"""Stable Diffusion 3 / 3.5 (MMDiT, rectified flow; T5 optional). Also the toy model's family."""

from __future__ import annotations

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    calculate_shift,
    retrieve_timesteps,
)

from samplers.adapters.base import Adapter
from samplers.flow import FLOW_STEPS
from samplers.types import Cond, Schedule


class FlowMatchMixin:
    """Schedule, step and decode shared by the rectified-flow families (SD3, FLUX)."""

    family = "flow"
    sde = "flow-grpo"  # the stochastic step (sampling.sde): Flow-GRPO's SDE, or cps

    def step(self, model_output, x, sigma, sigma_next, **kwargs):
        return FLOW_STEPS[self.sde](model_output, x, sigma, sigma_next, **kwargs)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_sigma = (1 - sigma) x0 + sigma noise; sigma [B]."""
        sigma = sigma.float().view(-1, *([1] * (x0.ndim - 1)))
        return (1 - sigma) * x0 + sigma * noise

    def training_times(
        self, batch: int, generator: torch.Generator | None = None, within: tuple[float, float] = (0.0, 1.0)
    ):
        """(t [B], sigma [B]) for training losses: logit-normal sigma, as SD3 trains, mapped affinely
        onto sigma in `within`."""
        lo, hi = within
        sigma = lo + (hi - lo) * torch.sigmoid(torch.randn(batch, generator=generator)).to(self.device)
        return sigma * 1000, sigma

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return noise - x0  # the velocity

    def _vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipeline.vae
        latents = vae.encode((images * 2 - 1).to(vae.dtype)).latent_dist.mean.float()
        return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor

    def _schedule_from_scheduler(self, num_steps: int, **kwargs) -> Schedule:
        scheduler = self.pipeline.scheduler
        retrieve_timesteps(scheduler, num_steps, self.device, **kwargs)
        return Schedule(timesteps=scheduler.timesteps.clone(), sigmas=scheduler.sigmas.clone())

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipeline.vae
        latents = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return self.postprocess(vae.decode(latents.to(vae.dtype), return_dict=False)[0])


class SD3Adapter(FlowMatchMixin, Adapter):
    default_steps = 28
    default_guidance = 7.0

    def __init__(self, pipeline, *, max_sequence_length: int = 256, **kwargs):
        self.max_sequence_length = max_sequence_length
        super().__init__(pipeline, **kwargs)

    @property
    def model(self):
        return self.pipeline.transformer

    def frozen_modules(self):
        p = self.pipeline
        return [m for m in (p.vae, p.text_encoder, p.text_encoder_2, p.text_encoder_3) if m is not None]

    def default_resolution(self) -> int:
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    def latent_shape(self):
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.model.config.in_channels, size, size)

    def encode_batch(self, prompts: list[str]) -> Cond:
        embeds, negative, pooled, negative_pooled = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=True,
            max_sequence_length=self.max_sequence_length,
        )
        return {
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
        }

    def denoise(self, x, t, cond):
        guided = self.guidance_scale > 1
        embeds, pooled = cond["prompt_embeds"], cond["pooled_prompt_embeds"]
        if guided:
            x, t = torch.cat([x, x]), torch.cat([t, t])
            embeds = torch.cat([cond["negative_prompt_embeds"], embeds])
            pooled = torch.cat([cond["negative_pooled_prompt_embeds"], pooled])
        output = self.network(
            hidden_states=x.to(self.dtype),
            timestep=t,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if guided:
            uncond, text = output.chunk(2)
            output = self.guide(uncond, text)
        return output

    def schedule(self, num_steps: int) -> Schedule:
        scheduler = self.pipeline.scheduler
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            size = self.resolution // self.pipeline.vae_scale_factor // self.model.config.patch_size
            kwargs["mu"] = calculate_shift(
                size * size,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.16),
            )
        return self._schedule_from_scheduler(num_steps, **kwargs)

    def decode(self, latents):
        return self._vae_decode(latents)

    def encode_images(self, images):
        return self._vae_encode(images)

    def pipeline_images(self, prompts, generators, num_steps, cond=None):
        return self._pipeline_call(prompts, generators, num_steps, cond, max_sequence_length=self.max_sequence_length).images.float()
