"""DINOv2 rewards against a reference set of images (a folder or a tensor), both differentiable.

`dino`: per image, the mean cosine similarity between its DINOv2 CLS feature and those of its `k`
nearest references. Rewards looking like *some* reference, and is independent of the rest of the batch.

`dino-distribution`: instance-to-distribution, in the spirit of DRAGON (Bai et al. 2025, "DRAGON:
Distributional Rewards Optimize Diffusion Generative Models", arXiv:2504.15217, which scores each
generation by its effect on a distribution-level metric such as FAD). Here the distribution distance
is the (biased, V-statistic) squared MMD between batch features X = {x_1..x_n} and references
Y = {y_1..y_m} under a kernel k (Gretton et al. 2012, "A Kernel Two-Sample Test", the biased estimate):

    MMD²(X, Y) = 1/n² Σ_ij k(x_i, x_j) + 1/m² Σ_ij k(y_i, y_j) - 2/(nm) Σ_ij k(x_i, y_j)

and image i is rewarded by how much the distance grows when it is left out, scaled by n so that the
values do not shrink with the batch size:

    r_i = n [MMD²(X \\ {x_i}, Y) - MMD²(X, Y)]

With S = Σ_jl k(x_j, x_l), a_i = Σ_j k(x_i, x_j), b_i = Σ_j k(x_i, y_j), T = Σ_i b_i (the reference
term cancels):

    MMD²(X \\ {x_i}, Y) - MMD²(X, Y) = (S - 2 a_i + k(x_i, x_i)) / (n-1)² - S / n²
                                      - 2 (T - b_i) / ((n-1) m) + 2 T / (n m)

For large n, r_i tends to 2 [mean_j k(x_i, y_j) - mean_j k(x_i, x_j)] + a constant: attraction to the
references, repulsion from the rest of the batch, so it rewards coverage as well as fidelity. The
kernel is Gaussian on the unit-normalised features, k = exp(-|a - b|² / h) with h the median squared
distance between references (the median heuristic), or `kernel="cosine"` (k = a.b, for which MMD is
the distance between mean embeddings). The reward needs the whole batch at once (at least 2 images);
features are still computed `chunk_size` images at a time.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from rewards.base import Reward, register_reward
from rewards.dino_backbone import DINO_MODEL, DinoBackbone, reference_features


def nearest_similarity(features: torch.Tensor, references: torch.Tensor, k: int) -> torch.Tensor:
    """features [B, D], references [N, D], both unit norm -> [B] mean cosine to the k nearest."""
    return (features @ references.T).topk(k, dim=-1).values.mean(-1)


def kernel_matrix(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None) -> torch.Tensor:
    """[n, D], [m, D] -> [n, m]; Gaussian exp(-|a-b|²/bandwidth), or cosine a.b when bandwidth is None."""
    if bandwidth is None:
        return a @ b.T
    squared = (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1) - 2 * a @ b.T).clamp(min=0)
    return torch.exp(-squared / bandwidth)


def median_bandwidth(references: torch.Tensor) -> float:
    """The median squared pairwise distance between distinct references."""
    squared = torch.cdist(references, references).pow(2)
    upper = torch.triu_indices(len(references), len(references), offset=1)
    return max(float(squared[upper[0], upper[1]].median()), 1e-6)


def leave_one_out_mmd(
    features: torch.Tensor, references: torch.Tensor, bandwidth: float | None
) -> torch.Tensor:
    """features [n, D] (n >= 2), references [m, D] -> [n]: n [MMD²(X without i, Y) - MMD²(X, Y)]."""
    n, m = len(features), len(references)
    within = kernel_matrix(features, features, bandwidth)  # [n, n]
    across = kernel_matrix(features, references, bandwidth)  # [n, m]
    total, row, diagonal = within.sum(), within.sum(1), within.diagonal()
    cross, cross_row = across.sum(), across.sum(1)
    without = (total - 2 * row + diagonal) / (n - 1) ** 2 - 2 * (cross - cross_row) / ((n - 1) * m)
    full = total / n**2 - 2 * cross / (n * m)
    return n * (without - full)


class _DinoReference(Reward):
    differentiable = True

    def __init__(self, references, model: str = DINO_MODEL, dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if references is None:
            raise ValueError("references is required: a folder of reference images or a tensor [N, 3, H, W]")
        self.backbone = DinoBackbone(model, self.device, dtype)
        self.register_buffer("references", reference_features(self.backbone, references).to(self.device))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images)[0], dim=-1)


class DinoSimilarity(_DinoReference):
    def __init__(self, references=None, k: int = 5, **kwargs):
        super().__init__(references, **kwargs)
        if not 1 <= k <= len(self.references):
            raise ValueError(f"k must lie in [1, {len(self.references)}] (the number of references), got {k}")
        self.k = k

    def score(self, images, prompts):
        return nearest_similarity(self.features(images), self.references, self.k)


class DinoDistribution(_DinoReference):
    def __init__(self, references=None, kernel: str = "gaussian", chunk_size: int = 32, **kwargs):
        super().__init__(references, chunk_size=sys.maxsize, **kwargs)  # score sees the whole batch
        if kernel not in ("gaussian", "cosine"):
            raise ValueError(f"kernel must be 'gaussian' or 'cosine', got {kernel!r}")
        if len(self.references) < 2:
            raise ValueError("dino-distribution needs at least 2 reference images")
        self.bandwidth = median_bandwidth(self.references) if kernel == "gaussian" else None
        self.feature_chunk_size = chunk_size

    def score(self, images, prompts):
        if len(images) < 2:
            raise ValueError(
                "dino-distribution scores each image by its effect on the batch's distance to the"
                f" references: give at least 2 images, got {len(images)}"
            )
        size = self.feature_chunk_size
        features = torch.cat([self.features(images[i : i + size]) for i in range(0, len(images), size)])
        return leave_one_out_mmd(features, self.references, self.bandwidth)


_WEIGHTS = f"transformers DINOv2 (model={DINO_MODEL}, or timm:NAME) + references=<folder|tensor>"
register_reward(
    "dino",
    differentiable=True,
    weights=_WEIGHTS,
    description="mean DINOv2 cosine similarity to the k nearest reference images",
)(DinoSimilarity)
register_reward(
    "dino-distribution",
    differentiable=True,
    weights=_WEIGHTS,
    description="each image's leave-one-out contribution to the batch-to-references MMD (DRAGON-style)",
)(DinoDistribution)
