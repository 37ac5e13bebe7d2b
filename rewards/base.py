"""The Reward protocol and registry.

A reward maps `images [B, 3, H, W] float32 in [0, 1]` and `prompts [B]` to `Tensor[B]` float32,
higher is better; a video reward (`video = True`) maps clips [B, F, 3, H, W] the same way. A
differentiable reward keeps the autograd graph from the images; a black-box one is computed without it
(and says so). Weights load in the constructor, never at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from plumbing.registry import Registry


@dataclass(frozen=True)
class RewardInfo:
    name: str
    factory: Callable[..., Reward]
    differentiable: bool
    weights: str  # where its weights come from, for `align rewards list`
    description: str


REWARDS: Registry = Registry("reward", catalogue="rewards.catalogue")  # every built-in: loaded on a miss


class NonFiniteReward(ValueError):
    """A reward returned NaN or inf; `values` [B] is what it returned, so that training can skip the
    step (see RewardSet.score) while any other caller gets the error."""

    def __init__(self, message: str, values: torch.Tensor):
        super().__init__(message)
        self.values = values


def register_reward(name: str, *, differentiable: bool, weights: str, description: str):
    """Decorator for a reward class or factory function."""

    def add(factory):
        REWARDS[name] = RewardInfo(name, factory, differentiable, weights, description)
        return factory

    return add


def build_reward(name: str, **kwargs) -> Reward:
    """The reward `name` built with `kwargs`; `NAME@URL` is NAME as scored by the reward server at URL
    (rewards/remote.py; kwargs then go to its client: token, timeout, encoding)."""
    if "@" in name:
        served, url = name.split("@", 1)
        kwargs.pop("device", None)
        reward = REWARDS.lookup("remote").factory(url=url, rewards=[REWARDS.lookup(served).name], **kwargs)
        reward.name = served
        return reward
    info = REWARDS.lookup(name)
    reward = info.factory(**kwargs)
    reward.name = name
    return reward


def check_images(images, prompts: Sequence[str], name: str, video: bool = False) -> None:
    """Raise a ValueError naming the reward and the problem for any malformed input (`video`: clips
    [B, F, 3, H, W] instead of images)."""
    layout = "[B, F, 3, H, W] (clips)" if video else "[B, 3, H, W]"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"reward {name}: images must be a float tensor {layout}, got {type(images).__name__}")
    if images.ndim != (5 if video else 4) or images.shape[-3] != 3:
        raise ValueError(f"reward {name}: images must have shape {layout}, got {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"reward {name}: empty batch")
    if not images.is_floating_point():
        raise ValueError(f"reward {name}: images must be floating point in [0, 1], got {images.dtype}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"reward {name}: {len(prompts)} prompts for a batch of {images.shape[0]} images")
    finite = torch.isfinite(images.detach())
    if not bool(finite.all()):
        bad = sorted({int(i) for i in (~finite).flatten(1).any(1).nonzero().flatten()})
        raise ValueError(f"reward {name}: NaN or inf pixels in images {bad}")
    low, high = float(images.detach().min()), float(images.detach().max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"reward {name}: pixel values must lie in [0, 1], got [{low:.3g}, {high:.3g}]")


class Reward(torch.nn.Module):
    """Base class: validates input, chunks the batch, checks the output. Subclasses define `score`."""

    differentiable: bool = False
    video: bool = False  # scores clips [B, F, 3, H, W] (rewards/video.py) rather than images
    name: str = ""

    def __init__(self, *, device: str | torch.device = "cpu", chunk_size: int = 32):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.device = torch.device(device)
        self.chunk_size = chunk_size

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1] on self.device -> [b]; b <= chunk_size."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        name = self.name or type(self).__name__
        prompts = list(prompts)
        check_images(images, prompts, name, self.video)
        images = images.clamp(0, 1) if self.differentiable else images.detach().clamp(0, 1)
        outputs = []
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            for start in range(0, images.shape[0], self.chunk_size):
                chunk = images[start : start + self.chunk_size].to(self.device, torch.float32)
                outputs.append(self.score(chunk, prompts[start : start + self.chunk_size]).float())
        values = torch.cat(outputs).to(images.device)
        if values.shape != (images.shape[0],):
            raise ValueError(
                f"reward {name}: returned shape {list(values.shape)}, expected [{images.shape[0]}]"
            )
        if not bool(torch.isfinite(values.detach()).all()):
            bad = [int(i) for i in (~torch.isfinite(values.detach())).nonzero().flatten()]
            raise NonFiniteReward(f"reward {name}: returned NaN or inf for images {bad}", values)
        return values


def quantise(images: torch.Tensor) -> torch.Tensor:
    """What an image becomes after a round trip through uint8 (the PIL path), as float in [0, 1]."""
    return (images.detach().clamp(0, 1) * 255).round() / 255


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> [B, H, W, 3] uint8 (round to nearest, as PIL conversion does)."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(array) for array in to_uint8(images)]


def from_pil(pictures: Sequence) -> torch.Tensor:
    """PIL images (same size) -> [B, 3, H, W] float32 in [0, 1]."""
    arrays = [np.asarray(p.convert("RGB"), dtype=np.float32) / 255 for p in pictures]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_image_files(paths: Sequence[str]) -> torch.Tensor:
    """Image files -> [B, 3, H, W]; every image must have the size of the first."""
    from PIL import Image, UnidentifiedImageError

    pictures = []
    for path in paths:
        try:
            pictures.append(Image.open(path).convert("RGB"))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    sizes = {p.size for p in pictures}
    if len(sizes) > 1:
        size = pictures[0].size
        pictures = [p.resize(size) for p in pictures]
    return from_pil(pictures)
