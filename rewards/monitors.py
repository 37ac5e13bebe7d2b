"""Reward-hacking monitors: cheap statistics of a batch of images, logged and never optimised.

They track the symptoms reported when Flow-GRPO / DanceGRPO runs collapse: over-saturated colours,
a shrinking palette, smooth or noisy textures, periodic (grid) artefacts, and mode collapse (all the
samples alike). Each is a pure function of images [B, 3, H, W] in [0, 1] returning a float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rewards.transforms import resize, to_grey


def saturation(images: torch.Tensor) -> float:
    """Mean HSV saturation, (max - min) / max per pixel, in [0, 1] (0 for black pixels)."""
    high, low = images.amax(1), images.amin(1)
    return float(torch.where(high > 0, (high - low) / high.clamp(min=1e-6), torch.zeros_like(high)).mean())


def colour_entropy(images: torch.Tensor, bins: int = 8) -> float:
    """Mean entropy in bits of each image's colour histogram (bins^3 RGB cells); at most 3 log2(bins)."""
    cells = (images.clamp(0, 1) * (bins - 1e-6)).long()  # [B, 3, H, W] in 0..bins-1
    index = (cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]
    entropies = []
    for row in index.flatten(1):
        p = torch.bincount(row, minlength=bins**3).float() / row.numel()
        p = p[p > 0]
        entropies.append(float(-(p * p.log2()).sum()))
    return sum(entropies) / len(entropies)


def edge_density(images: torch.Tensor, threshold: float = 0.1) -> float:
    """Fraction of pixels whose luma Sobel gradient magnitude (in intensity per pixel) exceeds `threshold`."""
    sobel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=images.device) / 8
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None]  # [2, 1, 3, 3]
    gradients = F.conv2d(F.pad(to_grey(images.float()), (1, 1, 1, 1), mode="replicate"), kernels)
    return float((gradients.pow(2).sum(1).sqrt() > threshold).float().mean())


def _power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """|FFT|² of the mean-free luma [B, H, W], zero frequency at index (0, 0)."""
    grey = to_grey(images.float())[:, 0]
    return torch.fft.fft2(grey - grey.mean((-2, -1), keepdim=True)).abs().pow(2)


def high_frequency_energy(images: torch.Tensor, cutoff: float = 0.5) -> float:
    """Fraction of the (non-DC) spectral energy above `cutoff` x Nyquist in radius; white noise gives
    about 1 - π cutoff² / 4 (0.80 at 0.5), natural images far less."""
    power = _power_spectrum(images)
    height, width = power.shape[-2:]
    fy = torch.fft.fftfreq(height, device=power.device).abs()[:, None] * 2  # in units of Nyquist
    fx = torch.fft.fftfreq(width, device=power.device).abs()[None, :] * 2
    high = (fy**2 + fx**2).sqrt() > cutoff
    return float((power * high).sum() / power.sum().clamp(min=1e-12))


def grid_energy(images: torch.Tensor, period: int = 8) -> float:
    """Fraction of the spectral energy at the harmonics of a `period`-pixel grid (frequencies k/period
    cycles per pixel, k = 1..period-1, on either axis): the checkerboard of a decoder with 8x
    upsampling shows up here. A spectrally flat image gives the share of those bins, about
    2 (period - 1) / H for an H x H image."""
    power = _power_spectrum(images)
    height, width = power.shape[-2:]
    harmonics = torch.arange(1, period, device=power.device) / period
    rows = torch.zeros(height, dtype=torch.bool, device=power.device)
    cols = torch.zeros(width, dtype=torch.bool, device=power.device)
    rows[(harmonics * height).round().long() % height] = True
    cols[(harmonics * width).round().long() % width] = True
    rows[0], cols[0] = False, False
    grid = rows[:, None] | cols[None, :]
    return float((power * grid).sum() / power.sum().clamp(min=1e-12))


def batch_diversity(images: torch.Tensor, features: torch.Tensor | None = None, size: int = 32) -> float:
    """Mean pairwise distance between the samples: 1 - cosine between given features [B, D] (such as
    DINO embeddings), or by default the RMS pixel difference of 32x32 thumbnails, in [0, 1]. 0 for a
    single image or identical ones; a falling value is mode collapse."""
    count = images.shape[0]
    if count < 2:
        return 0.0
    if features is None:
        thumbnails = resize(images.float(), size, size).flatten(1)
        distances = torch.cdist(thumbnails, thumbnails) / thumbnails.shape[1] ** 0.5
    else:
        unit = F.normalize(features.float(), dim=-1)
        distances = 1 - unit @ unit.T
    distances = distances * (1 - torch.eye(count, device=distances.device))
    return max(float(distances.sum() / (count * (count - 1))), 0.0)


def hacking_monitors(images: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, float]:
    """The monitors of a batch of images, or of clips [B, F, 3, H, W]: every frame an image, the
    diversity between the clips' middle frames (frames of one clip are alike by design)."""
    images = images.detach()
    compared = images[:, images.shape[1] // 2] if images.ndim == 5 else images  # one frame a clip
    frames = images.flatten(0, 1) if images.ndim == 5 else images
    return {
        "saturation": saturation(frames),
        "colour_entropy": colour_entropy(frames),
        "edge_density": edge_density(frames),
        "high_frequency": high_frequency_energy(frames),
        "grid_energy": grid_energy(frames),
        "diversity": batch_diversity(compared, features),
    }
