"""The toy text-to-image model: a real SD3-family diffusers pipeline with tiny components.

32 x 32 RGB images; a VAE (f = 4) turns them into 8 x 8 x 4 latents, where the conv decoder draws
the edges; an MMDiT (`SD3Transformer2DModel`, patch 1, 64 image tokens) does rectified flow on
those latents; two tiny CLIP text encoders (word-level tokenizer over the toy grammar) condition
it; no T5. Saved with `save_pretrained`, loaded with `from_pretrained` through the SD3 adapter,
exactly like SD3.5. This file builds it for pretraining; samplers/toy.py loads the shipped weights.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from plumbing.tokenizers import clip_tokenizer
from rewards.toy_world import COLOURS, COUNTS, RELATIONS, RESOLUTION, SHAPES

MAX_LENGTH = 12  # tokens: the longest toy prompt is 8 words + start/end
TEXT_WIDTHS = (64, 32)  # hidden sizes of the two text encoders (their sum is the joint attention dim)
WIDTH, LAYERS, HEAD_DIM = 128, 6, 32  # transformer: 3.5M parameters, 0.44 s per batch-64 step on 2 cores
LATENT_CHANNELS, LATENT_SIZE = 4, RESOLUTION // 4


def toy_words() -> list[str]:
    """Every word of the toy grammar, so that each becomes a single token."""
    words = list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES] + list(COUNTS.values()) + ["an"]
    return words + sorted({w for r in RELATIONS for w in r.split()})


def build_tokenizer():
    return clip_tokenizer(toy_words(), model_max_length=MAX_LENGTH)


def build_text_encoder(hidden: int, layers: int, tokenizer) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=RESOLUTION,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_transformer() -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=1,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=LAYERS,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=WIDTH // HEAD_DIM,
        joint_attention_dim=sum(TEXT_WIDTHS),
        caption_projection_dim=WIDTH,
        pooled_projection_dim=sum(TEXT_WIDTHS),
        pos_embed_max_size=LATENT_SIZE,
    )


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=1.0)


def build_pipeline(seed: int = 0, vae: AutoencoderKL | None = None) -> StableDiffusion3Pipeline:
    """A freshly initialised toy pipeline (random weights; pass a trained VAE to reuse it)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=build_transformer(),
        scheduler=build_scheduler(),
        vae=vae if vae is not None else build_vae(),
        text_encoder=build_text_encoder(TEXT_WIDTHS[0], 2, tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=build_text_encoder(TEXT_WIDTHS[1], 1, tokenizer),
        tokenizer_2=build_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
