"""Video rewards: clips [B, F, 3, H, W] in [0, 1] -> [B].

- `frames`: any image reward on every frame, aggregated over the frames (mean, min or last), with
  the clip's prompt or, for the toy video world, the still scene it describes (`prompts: still`:
  "a red circle moving left slowly" -> "a red circle"); differentiable when the image reward is.
- `temporal-consistency`: the mean cosine similarity of consecutive frames' features (pixels,
  an open_clip image tower, the toy CLIP's, or a DINO backbone), in [-1, 1]: 1 for a clip whose
  frames all look alike; flicker and jumps lower it. Differentiable.
The motion verifier of the toy video world is rewards/geneval_video.py (`geneval-toy-video`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rewards.base import Reward, build_reward, register_reward

AGGREGATES = {
    "mean": lambda values: values.mean(1),
    "min": lambda values: values.min(1).values,
    "last": lambda values: values[:, -1],
}


def still_prompt(prompt: str) -> str:
    """The still scene of a toy-video prompt; any other prompt as it is."""
    from rewards.toy_video import parse_video_prompt

    try:
        return parse_video_prompt(prompt).scene.text()
    except ValueError:
        return prompt


@register_reward(
    "frames",
    differentiable=True,
    weights="those of the image reward it wraps (args: reward, reward_args)",
    description="video: an image reward on every frame, aggregated (mean | min | last)",
)
class FrameReward(Reward):
    video = True

    def __init__(
        self,
        reward: str = "clip-toy",
        aggregate: str = "mean",
        prompts: str = "clip",
        reward_args: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if aggregate not in AGGREGATES:
            raise ValueError(f"frames: unknown aggregate {aggregate!r}; use one of {', '.join(AGGREGATES)}")
        if prompts not in ("clip", "still"):
            raise ValueError(f"frames: prompts={prompts!r}; use 'clip' (as given) or 'still' (the toy scene)")
        self.inner = build_reward(reward, device=self.device, **(reward_args or {}))
        if self.inner.video:
            raise ValueError(f"frames: {reward!r} already scores clips; wrap an image reward")
        self.differentiable = self.inner.differentiable
        self.aggregate, self.prompts = aggregate, prompts

    def score(self, images, prompts):
        batch, frames = images.shape[:2]
        texts = [still_prompt(p) for p in prompts] if self.prompts == "still" else list(prompts)
        flat = self.inner(images.flatten(0, 1), [t for t in texts for _ in range(frames)])
        return AGGREGATES[self.aggregate](flat.view(batch, frames))


class _PixelFeatures(torch.nn.Module):
    def forward(self, images):
        flat = images.flatten(1)
        return flat - flat.mean(1, keepdim=True)


class _OpenClipFeatures(torch.nn.Module):
    def __init__(self, model: str, pretrained: str | None, device):
        super().__init__()
        from rewards.open_clip_models import load_open_clip

        self.clip, _, self.normalisation = load_open_clip(model, pretrained, device)

    def forward(self, images):
        from rewards.open_clip_models import image_embeddings

        return image_embeddings(self.clip, images, self.normalisation)


class _DinoFeatures(torch.nn.Module):
    def __init__(self, model: str, device):
        super().__init__()
        from rewards.dino_backbone import DinoBackbone

        self.backbone = DinoBackbone(model, device)

    def forward(self, images):
        return self.backbone(images)[0]


def frame_features(features: str, model: str | None, pretrained: str | None, device) -> torch.nn.Module:
    if features == "pixels":
        return _PixelFeatures()
    if features == "toy-clip":
        from rewards.clip_score import _toy_clip_dir

        return _OpenClipFeatures(_toy_clip_dir(), None, device)
    if features == "open_clip":
        return _OpenClipFeatures(model or "ViT-H-14", pretrained, device)
    if features == "dino":
        from rewards.dino_backbone import DINO_MODEL

        return _DinoFeatures(model or DINO_MODEL, device)
    raise ValueError(f"temporal-consistency: unknown features {features!r}; use pixels, toy-clip, open_clip or dino")


@register_reward(
    "temporal-consistency",
    differentiable=True,
    weights="none for pixels; open_clip / DINO / the toy CLIP by `features` (model, pretrained)",
    description="video: mean cosine similarity of consecutive frames' features (1: no change)",
)
class TemporalConsistency(Reward):
    differentiable = True
    video = True

    def __init__(self, features: str = "pixels", model: str | None = None, pretrained: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.features = frame_features(features, model, pretrained, self.device)

    def score(self, images, prompts):
        batch, frames = images.shape[:2]
        if frames < 2:
            raise ValueError(f"temporal-consistency: a clip of {frames} frame has no consecutive pair")
        features = F.normalize(self.features(images.flatten(0, 1)).float(), dim=-1).view(batch, frames, -1)
        return (features[:, 1:] * features[:, :-1]).sum(-1).mean(1)
