"""Stable Diffusion XL (two text encoders, pooled text embeds and size/crop time ids)."""

from __future__ import annotations

import torch

from samplers.adapters.base import Adapter
from samplers.adapters.sd import UNetMixin
from samplers.types import Cond


class SDXLAdapter(UNetMixin, Adapter):
    default_steps = 50
    default_guidance = 5.0

    def __init__(self, pipeline, **kwargs):
        self.pipeline = pipeline
        self._use_ddim()
        super().__init__(pipeline, **kwargs)

    def frozen_modules(self):
        p = self.pipeline
        return [m for m in (p.vae, p.text_encoder, p.text_encoder_2) if m is not None]

    def encode_batch(self, prompts: list[str]) -> Cond:
        embeds, negative, pooled, negative_pooled = self.pipeline.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
        return {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        }

    def _time_ids(self, batch: int, projection_dim: int) -> torch.Tensor:
        """original size + crop (0, 0) + target size, as the pipeline builds them by default."""
        size = (self.resolution, self.resolution)
        ids = self.pipeline._get_add_time_ids(size, (0, 0), size, self.dtype, projection_dim)
        return ids.to(self.device).expand(batch, -1)

    def denoise(self, x, t, cond):
        def call(x, t, with_negative):
            embeds, pooled = cond["prompt_embeds"], cond["pooled_prompt_embeds"]
            if with_negative:
                embeds = torch.cat([cond["negative_prompt_embeds"], embeds])
                pooled = torch.cat([cond["negative_pooled_prompt_embeds"], pooled])
            added = {"text_embeds": pooled, "time_ids": self._time_ids(x.shape[0], pooled.shape[-1])}
            return self.network(
                self._scaled_input(x),
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs=added,
                return_dict=False,
            )[0]

        return self._guided(x, t, call)
