"""Wan 2.1 text-to-video (WanPipeline: a 3D-patch DiT, a causal 3D VAE, UMT5; rectified flow).

A video is one sample: latents [B, C, F', h, w] (F' = (frames - 1) / temporal factor + 1), decoded to
videos [B, F, 3, H, W] in [0, 1]. Everything else is the image contract: the flow SDE's per-step
log-probs are the Gaussian's over the whole latent, and the same rollout, losses and LoRA apply.

Wan ships UniPC as its scheduler; the rollout steps Euler (and the flow SDE) on the same shifted flow
sigmas, so the adapter gives the pipeline the Euler scheduler at Wan's `flow_shift`, and `align doctor`
compares like with like.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from samplers.adapters.base import Adapter
from samplers.adapters.sd3 import FlowMatchMixin
from samplers.types import Cond, Schedule


class WanAdapter(FlowMatchMixin, Adapter):
    default_steps = 50
    default_guidance = 5.0
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]  # self- and cross-attention of every block

    def __init__(self, pipeline, *, frames: int = 9, max_sequence_length: int = 226, **kwargs):
        scheduler = pipeline.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            shift = scheduler.config.get("flow_shift") or scheduler.config.get("shift") or 3.0
            pipeline.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        temporal = pipeline.vae_scale_factor_temporal
        if frames < 1 or (frames - 1) % temporal:
            raise ValueError(
                f"frames={frames}: a Wan VAE with temporal factor {temporal} takes 1 + {temporal}k frames "
                f"(e.g. {temporal + 1} or {4 * temporal + 1})"
            )
        self.frames = frames
        self.max_sequence_length = max_sequence_length
        super().__init__(pipeline, **kwargs)

    @property
    def model(self):
        return self.pipeline.transformer

    def frozen_modules(self):
        return [self.pipeline.vae, self.pipeline.text_encoder]

    def default_resolution(self) -> int:
        return 480

    def latent_shape(self):
        p = self.pipeline
        size = self.resolution // p.vae_scale_factor_spatial
        latent_frames = (self.frames - 1) // p.vae_scale_factor_temporal + 1
        return (self.model.config.in_channels, latent_frames, size, size)

    def encode_batch(self, prompts: list[str]) -> Cond:
        embeds, negative = self.pipeline.encode_prompt(
            prompt=prompts,
            do_classifier_free_guidance=True,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}

    def denoise(self, x, t, cond):
        guided = self.guidance_scale > 1
        embeds = cond["prompt_embeds"]
        if guided:  # one batched call; the pipeline makes two (the same per-sample arithmetic)
            x, t = torch.cat([x, x]), torch.cat([t, t])
            embeds = torch.cat([cond["negative_prompt_embeds"], embeds])
        output = self.network(
            hidden_states=x.to(self.dtype), timestep=t, encoder_hidden_states=embeds, return_dict=False
        )[0]
        if guided:
            uncond, text = output.chunk(2)
            output = self.guide(uncond, text)
        return output

    def schedule(self, num_steps: int) -> Schedule:
        return self._schedule_from_scheduler(num_steps)

    def decode(self, latents):
        """Latents [B, C, F', h, w] -> videos [B, F, 3, H, W] in [0, 1] (differentiable)."""
        vae = self.pipeline.vae
        mean, std = latent_normalisation(vae, latents)
        video = vae.decode((latents * std + mean).to(vae.dtype), return_dict=False)[0]
        return self.postprocess(video).transpose(1, 2)

    def encode_images(self, images):
        """Videos [B, F, 3, H, W] in [0, 1] -> latents (the VAE's mean, normalised as Wan trains)."""
        return encode_videos(self.pipeline.vae, images)

    def pipeline_images(self, prompts, generators, num_steps, cond=None):
        return self._pipeline_call(prompts, generators, num_steps, cond, num_frames=self.frames, max_sequence_length=self.max_sequence_length).frames.float()

    def describe(self):
        return {**super().describe(), "frames": self.frames}


def latent_normalisation(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Wan VAE's per-channel latents_mean and latents_std, [1, C, 1, 1, 1] on `like`'s device and dtype."""
    config = vae.config
    shape = (1, config.z_dim, 1, 1, 1)
    mean = torch.tensor(config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def encode_videos(vae, videos: torch.Tensor) -> torch.Tensor:
    """Videos [B, F, 3, H, W] in [0, 1] -> latents [B, C, F', h, w]: a Wan VAE's mean, normalised as Wan
    trains (and as the toy video model's diffusion stage trains on its clips)."""
    latents = vae.encode((videos.transpose(1, 2) * 2 - 1).to(vae.dtype)).latent_dist.mean.float()
    mean, std = latent_normalisation(vae, latents)
    return (latents - mean) / std
