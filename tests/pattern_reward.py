"""A test reward, importable by subprocesses through ALIGN_PLUGINS=pattern_reward."""

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
