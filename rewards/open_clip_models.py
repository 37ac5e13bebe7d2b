"""Loading open_clip models for rewards, and their differentiable image preprocessing.

`model` is an open_clip architecture name (`ViT-H-14`), `hf-hub:org/repo`, or `local-dir:PATH` (a
folder with open_clip_config.json and open_clip_model.safetensors, the layout of hub repos).
`pretrained` is a tag (`laion2b_s32b_b79k`) or a weights file, for architecture names only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rewards.transforms import ImageTransform


def require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is not installed; pip install 'diffusion-align[{extra}]'") from error


def load_open_clip(model: str, pretrained: str | None, device, dtype=torch.float32):
    """(model, tokenizer, (mean, std, size)) with every parameter frozen."""
    open_clip = require("open_clip", "dev")
    try:
        clip = open_clip.create_model(model, pretrained=pretrained, device=device, precision="fp32")
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as error:
        raise ValueError(
            f"cannot load open_clip model {model!r} (pretrained={pretrained!r}): {error}"
        ) from error
    clip = clip.to(dtype).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model)
    config = clip.visual.preprocess_cfg
    size = config["size"] if isinstance(config["size"], int) else config["size"][0]
    return clip, tokenizer, (tuple(config["mean"]), tuple(config["std"]), size)


def preprocess(images: torch.Tensor, normalisation) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> the model's input, as open_clip's own eval transform does it: bicubic
    resize of the shortest side (antialiased), centre crop, normalise. Differentiable."""
    mean, std, size = normalisation
    return ImageTransform(size, size, tuple(mean), tuple(std))(images)


def image_embeddings(clip, images: torch.Tensor, normalisation) -> torch.Tensor:
    """L2-normalised image embeddings [B, D] (float32)."""
    dtype = next(clip.parameters()).dtype
    features = clip.encode_image(preprocess(images, normalisation).to(dtype)).float()
    return F.normalize(features, dim=-1)


def text_embeddings(clip, tokenizer, prompts: list[str], device) -> torch.Tensor:
    features = clip.encode_text(tokenizer(prompts).to(device)).float()
    return F.normalize(features, dim=-1)
