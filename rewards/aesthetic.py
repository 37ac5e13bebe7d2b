"""Aesthetic score: the LAION predictor (a small head on normalised open_clip image embeddings).

LAION's improved-aesthetic-predictor is an MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1 without
activations, on ViT-L/14 embeddings; its weights ship as a .pth state dict (read here with
`torch.load(weights_only=True)`, which executes no pickled code) or, converted, as .safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rewards.base import Reward, register_reward
from rewards.open_clip_models import image_embeddings, load_open_clip
from rewards.toy_world import ASSETS as TOY_ASSETS

LAION_HEAD = "camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth"


class AestheticHead(torch.nn.Module):
    """Linear layers with dropout between them (LAION's layout: keys layers.{0,2,4,6,7})."""

    def __init__(self, embed_dim: int = 768, hidden=(1024, 128, 64, 16), activation: str = "none"):
        super().__init__()
        layers, width = [], embed_dim
        dropouts = (0.2, 0.2, 0.1)
        for i, size in enumerate(hidden):
            layers.append(torch.nn.Linear(width, size))
            if activation == "gelu":
                layers.append(torch.nn.GELU())
            elif i < len(dropouts):
                layers.append(torch.nn.Dropout(dropouts[i]))
            width = size
        layers.append(torch.nn.Linear(width, 1))
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def resolve_file(path_or_hub: str) -> Path:
    """A local file, or `org/repo/filename` fetched by huggingface_hub (which honours HF_HUB_OFFLINE)."""
    path = Path(path_or_hub)
    if path.is_file():
        return path
    parts = path_or_hub.split("/")
    if len(parts) < 3:
        raise ValueError(
            f"weights {path_or_hub!r}: not a file, and not a hub path of the form org/repo/filename"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except Exception as error:  # hub errors come in many types; all mean the file is unavailable
        raise ValueError(f"cannot fetch weights {path_or_hub!r}: {type(error).__name__}: {error}") from error


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


class Aesthetic(Reward):
    differentiable = True

    def __init__(
        self,
        model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        head: str = LAION_HEAD,
        head_config: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.clip, _, self.normalisation = load_open_clip(model, pretrained, self.device)
        head_file = resolve_file(head)
        config_file = head_file.with_name("head_config.json")
        if head_config is None and config_file.is_file():
            head_config = json.loads(config_file.read_text())
        self.head = AestheticHead(**(head_config or {})).to(self.device).eval().requires_grad_(False)
        try:
            self.head.load_state_dict(load_weights_file(head_file))
        except RuntimeError as error:
            raise ValueError(
                f"aesthetic head {head_file} does not match the head architecture: {error}"
            ) from error

    def score(self, images, prompts):
        return self.head(image_embeddings(self.clip, images, self.normalisation))


register_reward(
    "aesthetic",
    differentiable=True,
    weights=f"open_clip ViT-L-14 (openai) + LAION head ({LAION_HEAD}); both overridable",
    description="LAION aesthetic predictor on CLIP image embeddings",
)(Aesthetic)


@register_reward(
    "aesthetic-toy",
    differentiable=True,
    weights="shipped: toy CLIP + quality head trained by `align pretrain-toy` (rewards/assets)",
    description="toy world quality: clean vs blurred/noisy/ragged shapes, on the toy CLIP embedding",
)
def _aesthetic_toy(**kwargs) -> Aesthetic:
    return Aesthetic(
        model=f"local-dir:{TOY_ASSETS / 'toy-clip'}",
        pretrained=None,
        head=str(TOY_ASSETS / "toy-quality" / "head.safetensors"),
        **kwargs,
    )
