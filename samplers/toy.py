"""Loading the shipped toy text-to-image model: a real SD3-family diffusers pipeline with tiny components
(its architecture and pretraining live in align/toy/). The weights are in samplers/assets/toy-pipeline,
read with diffusers' own `from_pretrained`, exactly like SD3.5."""

from __future__ import annotations

from pathlib import Path

import torch

PIPELINE_DIR = Path(__file__).parent / "assets" / "toy-pipeline"
DEFAULT_STEPS, DEFAULT_GUIDANCE = 20, 4.0

ADAPTER_DEFAULTS = {
    "family": "sd3",
    "max_sequence_length": 1,  # no T5: one zero token instead of 256
    "default_steps": DEFAULT_STEPS,
}


def load_toy_pipeline(dtype: torch.dtype = torch.float32, path: str | Path = PIPELINE_DIR):
    """The shipped toy pipeline, through diffusers' own `from_pretrained`."""
    from diffusers import StableDiffusion3Pipeline

    if not (Path(path) / "model_index.json").is_file():
        raise ValueError(
            f"the toy model is not at {path}; build it with `align pretrain-toy` (see README) or reinstall"
        )
    pipeline = StableDiffusion3Pipeline.from_pretrained(
        str(path), torch_dtype=dtype, text_encoder_3=None, tokenizer_3=None
    )
    return pipeline, dict(ADAPTER_DEFAULTS, guidance_scale=DEFAULT_GUIDANCE)
