"""A prompt x seed grid of images, the shape every evaluation and gallery column is drawn in."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def generate_grid(
    adapter, prompts: Sequence[str], seeds: int, num_steps: int | None = None, batch_size: int = 64
):
    """Images [P * S, 3, H, W], prompts and seeds in prompt-major order (prompt i, seed s)."""
    flat_prompts = [p for p in prompts for _ in range(seeds)]
    flat_seeds = [s for _ in prompts for s in range(seeds)]
    images = adapter.generate(flat_prompts, flat_seeds, num_steps=num_steps, batch_size=batch_size)
    return images, flat_prompts, flat_seeds
