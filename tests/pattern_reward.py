"""A test reward, importable by subprocesses through ALIGN_PLUGINS=pattern_reward."""

import random

import numpy as np
import torch

from rewards.base import REWARDS, Reward, register_reward


class Pattern(Reward):
    """Agreement with a fixed random pattern: a dense reward that a random tiny model can move
    (its decoder's mean brightness, by contrast, barely depends on the latents)."""

    differentiable = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pattern = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))

    def score(self, images, prompts):
        return 100 * ((images - 0.5) * self.pattern).mean(dim=(1, 2, 3))


if "test-pattern" not in REWARDS:
    register_reward("test-pattern", differentiable=True, weights="none", description="test")(Pattern)


class DrawingPattern(Pattern):
    """Pattern plus a small draw from python's and numpy's global streams for each image: a run that
    resumes those streams wrong scores (and so trains) differently from an uninterrupted one."""

    def score(self, images, prompts):
        draws = torch.tensor([random.random() + float(np.random.rand()) for _ in prompts])
        return super().score(images, prompts) + 1e-2 * draws


if "test-drawing-pattern" not in REWARDS:
    register_reward("test-drawing-pattern", differentiable=False, weights="none", description="test")(
        DrawingPattern
    )
