"""Loading the shipped toy models: text-to-image, a real SD3-family diffusers pipeline with tiny components,
and text-to-video (`toy-video`), a Wan-family one (their architectures and pretraining live in align/toy/).
The weights are in samplers/assets/toy-pipeline and toy-video-pipeline, read with diffusers' own
`from_pretrained`, exactly like SD3.5 and Wan 2.1."""

from __future__ import annotations

from pathlib import Path

import torch

PIPELINE_DIR = Path(__file__).parent / "assets" / "toy-pipeline"
VIDEO_PIPELINE_DIR = Path(__file__).parent / "assets" / "toy-video-pipeline"
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


# the toy video model: 9 frames of 32 x 32, prompts of at most 11 tokens (align/toy/video.py builds it)
VIDEO_ADAPTER_DEFAULTS = {
    "family": "wan",
    "frames": 9,
    "resolution": 32,
    "max_sequence_length": 12,
    "default_steps": DEFAULT_STEPS,
}


def load_toy_video_pipeline(dtype: torch.dtype = torch.float32, path: str | Path = VIDEO_PIPELINE_DIR):
    """The toy video pipeline, through diffusers' own `from_pretrained`."""
    from diffusers import WanPipeline

    if not (Path(path) / "model_index.json").is_file():
        raise ValueError(
            f"the toy video model is not at {path}; build it with `align pretrain-toy --world video --out DIR` "
            "and copy DIR/pipeline there"
        )
    pipeline = WanPipeline.from_pretrained(str(path), torch_dtype=dtype)
    return pipeline, dict(VIDEO_ADAPTER_DEFAULTS, guidance_scale=DEFAULT_GUIDANCE)
