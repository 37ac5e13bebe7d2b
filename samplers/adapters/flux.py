"""FLUX.1 (packed 2x2 latents, guidance embedding, dynamic shift)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from samplers.adapters.base import Adapter
from samplers.adapters.sd3 import FlowMatchMixin
from samplers.noise import draw_noise
from samplers.types import Cond, Schedule


class FluxAdapter(FlowMatchMixin, Adapter):
    """Latents live packed, [B, (h/2)(w/2), 4C], the layout the transformer takes.

    FLUX.1-dev is guidance-distilled: `guidance_scale` feeds the guidance embedding, with no
    unconditional pass. FLUX.1-schnell has no guidance embedding and ignores it.
    """

    default_steps = 28
    default_guidance = 3.5

    def __init__(self, pipeline, *, max_sequence_length: int = 512, **kwargs):
        self.max_sequence_length = max_sequence_length
        super().__init__(pipeline, **kwargs)

    @property
    def model(self):
        return self.pipeline.transformer

    def frozen_modules(self):
        p = self.pipeline
        return [m for m in (p.vae, p.text_encoder, p.text_encoder_2) if m is not None]

    def default_resolution(self) -> int:
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    def _latent_hw(self) -> int:
        return 2 * (self.resolution // (self.pipeline.vae_scale_factor * 2))

    def latent_shape(self):
        size = self._latent_hw()
        return ((size // 2) ** 2, self.model.config.in_channels)

    def initial_noise(self, generators, batch=None, num_steps=None):
        if batch is None:
            batch = len(generators)
        size = self._latent_hw()
        channels = self.model.config.in_channels // 4
        noise = draw_noise((batch, channels, size, size), generators, self.device, self.dtype).float()
        return self.pipeline._pack_latents(noise, batch, channels, size, size)

    def encode_batch(self, prompts: list[str]) -> Cond:
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def denoise(self, x, t, cond):
        size = self._latent_hw() // 2
        image_ids = self.pipeline._prepare_latent_image_ids(x.shape[0], size, size, self.device, self.dtype)
        embeds = cond["prompt_embeds"]
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = None
        if self.model.config.guidance_embeds:
            guidance = torch.full((x.shape[0],), self.guidance_scale, device=self.device, dtype=torch.float32)
        return self.network(
            hidden_states=x.to(self.dtype),
            timestep=(t / 1000).to(self.dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]

    def schedule(self, num_steps: int) -> Schedule:
        config = self.pipeline.scheduler.config
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        if config.get("use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            (self._latent_hw() // 2) ** 2,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return self._schedule_from_scheduler(num_steps, sigmas=sigmas, mu=mu)

    @contextlib.contextmanager
    def conditional(self):
        """FLUX.1-dev's guidance is an embedding (conditioning), not a second pass: nothing to switch off."""
        yield

    def encode_images(self, images):
        latents = self._vae_encode(images)
        batch, channels, height, width = latents.shape
        return self.pipeline._pack_latents(latents, batch, channels, height, width)

    def decode(self, latents):
        unpacked = self.pipeline._unpack_latents(
            latents, self.resolution, self.resolution, self.pipeline.vae_scale_factor
        )
        return self._vae_decode(unpacked)

    def pipeline_images(self, prompts, generators, num_steps, cond=None):
        return self._pipeline_call(prompts, generators, num_steps, cond, max_sequence_length=self.max_sequence_length).images.float()
