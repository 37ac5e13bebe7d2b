"""CLIP score: cosine similarity of image and prompt embeddings (any open_clip model)."""

from __future__ import annotations

import torch

from rewards.base import Reward, register_reward
from rewards.open_clip_models import image_embeddings, load_open_clip, text_embeddings
from rewards.toy_world import ASSETS as TOY_ASSETS


class ClipScore(Reward):
    differentiable = True

    def __init__(
        self,
        model: str = "ViT-H-14",
        pretrained: str | None = "laion2b_s32b_b79k",
        scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.clip, self.tokenizer, self.normalisation = load_open_clip(model, pretrained, self.device)
        self.scale = scale
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _texts(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            for prompt, row in zip(missing, text_embeddings(self.clip, self.tokenizer, missing, self.device)):
                self._text_cache[prompt] = row
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images, prompts):
        return self.scale * (
            image_embeddings(self.clip, images, self.normalisation) * self._texts(prompts)
        ).sum(-1)


register_reward(
    "clip",
    differentiable=True,
    weights="open_clip: model=<arch|hf-hub:..|local-dir:..>, pretrained=<tag|file> (default ViT-H-14 laion2b)",
    description="cosine similarity between image and prompt embeddings",
)(ClipScore)


def _toy_clip_dir() -> str:
    return f"local-dir:{TOY_ASSETS / 'toy-clip'}"


@register_reward(
    "clip-toy",
    differentiable=True,
    weights="shipped: the toy CLIP trained by `align pretrain-toy --stage clip` (rewards/assets/toy-clip)",
    description="CLIP score with the toy world's own CLIP",
)
def _clip_toy(**kwargs) -> ClipScore:
    return ClipScore(model=_toy_clip_dir(), pretrained=None, **kwargs)
