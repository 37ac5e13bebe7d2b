"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP ViT-H/14 fine-tuned on human preferences.

    score = exp(logit_scale) * cos(image embedding, prompt embedding)

as in the PickScore README's inference example (github.com/yuvalkirstain/PickScore); typical values
lie around 18-24. The published model pairs the checkpoint yuvalkirstain/PickScore_v1 with the
processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (resize the shortest side to 224, bicubic, centre
crop 224, OpenAI CLIP mean/std); the image processor's settings are read from that processor and
applied on tensors, so the reward is differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rewards.base import Reward, register_reward
from rewards.loading import from_pretrained, torch_dtype
from rewards.transforms import ImageTransform

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(Reward):
    differentiable = True

    def __init__(
        self,
        model: str = PICKSCORE_MODEL,
        processor: str = PICKSCORE_PROCESSOR,
        dtype: str = "float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        from transformers import AutoProcessor, CLIPModel

        self.processor = from_pretrained(AutoProcessor.from_pretrained, processor, "the PickScore processor")
        clip = from_pretrained(CLIPModel.from_pretrained, model, "the PickScore model")
        self.clip = clip.to(self.device, torch_dtype(dtype)).eval().requires_grad_(False)
        self.transform = ImageTransform.from_processor(self.processor.image_processor)
        tokenizer_limit = self.processor.tokenizer.model_max_length
        self.max_length = min(tokenizer_limit, self.clip.config.text_config.max_position_embeddings)
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """[B, D] L2-normalised; each distinct prompt is encoded once per reward object."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            tokens = self.processor.tokenizer(
                new, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            output = self.clip.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            features = F.normalize(self.clip.text_projection(output.pooler_output).float(), dim=-1)
            self._text_cache.update(zip(new, features))
        return torch.stack([self._text_cache[p] for p in prompts])

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images).to(self.clip.dtype)
        output = self.clip.vision_model(pixel_values=pixels)
        return F.normalize(self.clip.visual_projection(output.pooler_output).float(), dim=-1)

    def score(self, images, prompts):
        cosine = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)
        return self.clip.logit_scale.exp().float() * cosine


register_reward(
    "pickscore",
    differentiable=True,
    weights=f"transformers CLIPModel: model={PICKSCORE_MODEL}, processor={PICKSCORE_PROCESSOR} (hub ids or local dirs)",
    description="PickScore human-preference score (logit scale x cosine similarity)",
)(PickScore)
