"""Differentiable image preprocessing for reward models: resize, crop or pad, normalise.

The same arithmetic as the models' own PIL pipelines (transformers image processors, open_clip and
torchvision transforms), written on tensors so gradients reach the pixels. Bicubic resampling uses
`antialias=True`, PyTorch's port of PIL's filter, so the two paths differ by a fraction of a grey
level rather than by aliasing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights: what PIL's convert("L") and OpenCV's BGR2GRAY use.
LUMA = (0.299, 0.587, 0.114)


def resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, height, width], bicubic with PIL-style antialiasing."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def resize_shortest_crop(images: torch.Tensor, size: int, crop: int) -> torch.Tensor:
    """Scale so the shortest side is `size` (the other int(size * long / short), as torchvision and
    transformers round), then take the centred `crop` x `crop` square."""
    height, width = images.shape[-2:]
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    images = resize(images, new_height, new_width)
    top, left = (new_height - crop) // 2, (new_width - crop) // 2
    if top < 0 or left < 0:
        raise ValueError(f"crop {crop} is larger than the resized image {new_height}x{new_width}")
    return images[..., top : top + crop, left : left + crop]


def resize_longest_pad(images: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Scale so the longest side is `size`, then pad the other side evenly with `fill` (HPS v2's
    inference transform: the whole image is seen, letterboxed)."""
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    images = resize(images, new_height, new_width)
    pad_h, pad_w = size - new_height, size - new_width
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return images


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


@dataclass(frozen=True)
class ImageTransform:
    """images [B, 3, H, W] in [0, 1] -> a vision model's input [B, 3, crop, crop].

    mode "shortest": resize the shortest side to `size`, centre-crop `crop` (CLIP, DINOv2).
    mode "longest": resize the longest side to `crop`, pad with zeros before normalising (HPS v2).
    """

    size: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str = "shortest"

    def __post_init__(self):
        if self.mode not in ("shortest", "longest"):
            raise ValueError(f"ImageTransform mode must be 'shortest' or 'longest', got {self.mode!r}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "shortest":
            images = resize_shortest_crop(images, self.size, self.crop)
        else:
            images = resize_longest_pad(images, self.crop)
        return normalise(images, self.mean, self.std)

    @classmethod
    def from_processor(cls, processor) -> ImageTransform:
        """From a transformers image processor (CLIPImageProcessor, BitImageProcessor, ...)."""
        size = _side(processor.size, "shortest_edge", "height")
        crop = _side(processor.crop_size, "height") if getattr(processor, "do_center_crop", False) else size
        if getattr(processor, "do_rescale", True) and abs(processor.rescale_factor - 1 / 255) > 1e-9:
            raise ValueError(f"unsupported image processor rescale_factor {processor.rescale_factor}")
        mean = processor.image_mean if processor.do_normalize else (0.0, 0.0, 0.0)
        std = processor.image_std if processor.do_normalize else (1.0, 1.0, 1.0)
        return cls(size, crop, tuple(mean), tuple(std))


def _side(size, *keys: str) -> int:
    """An image processor's size: an int, a dict, or transformers' SizeDict."""
    if isinstance(size, int):
        return size
    for key in keys:
        side = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if side:
            return int(side)
    raise ValueError(f"unsupported image processor size {size!r}: expected one of {keys}")
