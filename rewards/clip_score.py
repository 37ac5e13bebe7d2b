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


class ClipGoalBaseline(ClipScore):
    """VLM-RM's goal-baseline reward (Rocamonde et al. 2024, eq. 3), zero-shot from any CLIP:

        R(x) = 1 - 1/2 || (e(x) - g) P ||^2,   P = alpha d d^T + (1 - alpha) I,   d = (g - b) / ||g - b||

    e(x) the normalised image embedding, g the prompt's (the goal), b the baseline's: one text, or the
    renormalised mean of several (a generic description of the scene, without what the goal asks).
    alpha = 0 is the CLIP score up to an affine map (1 - 1/2 ||e - g||^2 = e.g); alpha = 1 keeps only
    the component along the baseline-to-goal direction, which removes what the two texts share.
    Differentiable through the image encoder; under no_grad, the same number as a black box."""

    def __init__(self, baseline: str | list[str] = "a picture", alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"clip goal-baseline: alpha must lie in [0, 1], got {alpha}")
        texts = [baseline] if isinstance(baseline, str) else list(baseline)
        if not texts:
            raise ValueError("clip goal-baseline: give a baseline text (or a list of them)")
        mean = self._texts(texts).mean(0)
        self.baseline = mean / mean.norm()
        self.alpha = alpha

    def score(self, images, prompts):
        embedded = image_embeddings(self.clip, images, self.normalisation)
        goal = self._texts(prompts)
        direction = goal - self.baseline
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        residual = embedded - goal
        along = (residual * direction).sum(-1, keepdim=True) * direction
        projected = self.alpha * along + (1 - self.alpha) * residual
        return self.scale * (1 - 0.5 * projected.pow(2).sum(-1))


register_reward(
    "clip-goal",
    differentiable=True,
    weights="open_clip as `clip`; baseline=<text or list of texts> (default 'a picture'), alpha in [0, 1]",
    description="VLM-RM goal-baseline: the image embedding projected on the baseline-to-prompt direction",
)(ClipGoalBaseline)


@register_reward(
    "clip-goal-toy",
    differentiable=True,
    weights="shipped toy CLIP; baseline: the mean embedding of the toy world's training prompts",
    description="VLM-RM goal-baseline reward with the toy CLIP",
)
def _clip_goal_toy(baseline: str | list[str] | None = None, **kwargs) -> ClipGoalBaseline:
    from rewards.toy_world import prompt_splits

    return ClipGoalBaseline(
        model=_toy_clip_dir(), pretrained=None, baseline=baseline or prompt_splits()["train"], **kwargs
    )
