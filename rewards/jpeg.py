"""JPEG (in)compressibility: DDPO's classic rewards (Black et al. 2023, "Training Diffusion Models
with Reinforcement Learning", arXiv:2305.13301): the size in kB of the image saved by PIL as JPEG at
a fixed quality (95, as ddpo-pytorch). Compressibility rewards small files (smooth, flat images);
incompressibility large ones (texture, noise). Black-box: the encoder is not differentiable.
"""

from __future__ import annotations

import io

import torch

from rewards.base import Reward, register_reward, to_pil


def jpeg_sizes_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """images [B, 3, H, W] in [0, 1] -> [B] JPEG file sizes in kB (1000 bytes), via uint8 and PIL."""
    sizes = []
    for picture in to_pil(images):
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegSize(Reward):
    differentiable = False

    def __init__(self, *, sign: float, quality: int = 95, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= quality <= 95:
            raise ValueError(f"jpeg quality must lie in [1, 95] (PIL's useful range), got {quality}")
        self.sign, self.quality = sign, quality

    def score(self, images, prompts):
        return self.sign * jpeg_sizes_kb(images, self.quality).to(images.device)


@register_reward(
    "jpeg-compressibility",
    differentiable=False,
    weights="none (PIL JPEG encoder)",
    description="minus the JPEG size in kB at quality 95 (DDPO)",
)
def _compressibility(**kwargs) -> JpegSize:
    return JpegSize(sign=-1.0, **kwargs)


@register_reward(
    "jpeg-incompressibility",
    differentiable=False,
    weights="none (PIL JPEG encoder)",
    description="the JPEG size in kB at quality 95 (DDPO)",
)
def _incompressibility(**kwargs) -> JpegSize:
    return JpegSize(sign=1.0, **kwargs)
