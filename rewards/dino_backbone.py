"""A frozen DINOv2 feature extractor for the `dino*` and `discriminator` rewards, and reference sets.

`model` is a transformers checkpoint (hub id such as facebook/dinov2-base, or a local directory saved
with save_pretrained, read with AutoModel + AutoImageProcessor), or `timm:NAME` for timm
(`timm:vit_base_patch14_dinov2.lvd142m`, `timm:hf-hub:org/repo`, `timm:local-dir:PATH`). The image
processor's resize / centre crop / normalisation is applied on tensors, so features are
differentiable with respect to the pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from rewards.base import check_images, from_pil
from rewards.loading import first_line, from_pretrained, offline_hint, torch_dtype
from rewards.open_clip_models import require
from rewards.transforms import ImageTransform

DINO_MODEL = "facebook/dinov2-base"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _load_transformers(model: str):
    from transformers import AutoImageProcessor, AutoModel

    network = from_pretrained(AutoModel.from_pretrained, model, "the DINOv2 model")
    processor = from_pretrained(AutoImageProcessor.from_pretrained, model, "the DINOv2 image processor")
    prefix = 1 + getattr(network.config, "num_register_tokens", 0)  # CLS (+ registers) before patches
    return network, ImageTransform.from_processor(processor), prefix


def _load_timm(name: str):
    timm = require("timm", "dino")
    try:
        network = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as error:
        source = name.split(":", 1)[-1]
        raise ValueError(
            f"cannot load timm model {name!r}: {first_line(error)}{offline_hint(source)}"
        ) from error
    config = timm.data.resolve_model_data_config(network)
    crop = config["input_size"][-1]
    transform = ImageTransform(
        int(crop / config["crop_pct"]), crop, tuple(config["mean"]), tuple(config["std"])
    )
    return network, transform, network.num_prefix_tokens


class DinoBackbone(torch.nn.Module):
    """images [B, 3, H, W] in [0, 1] -> (cls [B, D], patches [B, N, D]), final layer norm applied."""

    def __init__(self, model: str = DINO_MODEL, device="cpu", dtype: str = "float32"):
        super().__init__()
        self.timm = model.startswith("timm:")
        network, self.transform, self.prefix = (
            _load_timm(model[5:]) if self.timm else _load_transformers(model)
        )
        self.network = network.to(device, torch_dtype(dtype)).eval().requires_grad_(False)
        self.dim = int(network.num_features if self.timm else network.config.hidden_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.transform(images).to(next(self.network.parameters()).dtype)
        if self.timm:
            tokens = self.network.forward_features(pixels)
        else:
            tokens = self.network(pixel_values=pixels).last_hidden_state
        return tokens[:, 0].float(), tokens[:, self.prefix :].float()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, chunk_size: int = 32) -> torch.Tensor:
        """L2-normalised CLS features [N, D] of many images, without gradients, in chunks."""
        device = next(self.network.parameters()).device
        rows = [self(images[i : i + chunk_size].to(device))[0] for i in range(0, len(images), chunk_size)]
        return F.normalize(torch.cat(rows), dim=-1)


def reference_features(backbone: DinoBackbone, references, chunk_size: int = 32) -> torch.Tensor:
    """L2-normalised CLS features [N, D] of a reference set: a folder of image files (any sizes; each
    is resized and cropped on its own) or a tensor [N, 3, H, W] in [0, 1]."""
    if isinstance(references, torch.Tensor):
        check_images(references, [""] * len(references), "references")
        return backbone.embed(references, chunk_size)
    from PIL import Image

    folder = Path(references)
    if not folder.is_dir():
        raise ValueError(f"references {str(references)!r}: not a folder of images nor a tensor [N, 3, H, W]")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"references {str(folder)!r}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    with torch.no_grad():
        rows = [backbone.embed(from_pil([Image.open(path)])) for path in files]
    return torch.cat(rows)
