"""Full-size pipelines of the shipped large recipes' models with no weights: every module built on
the meta device from the published architecture, so that `align plan` can count parameters and trace
activations of a model this machine cannot download or hold.

The architectures are those of the models' published diffusers configs (transformer, VAE, text
encoders: CLIP ViT-L/14, OpenCLIP ViT-bigG/14, T5 v1.1 XXL); the tokenizers are the code-built ones
of plumbing/tokenizers.py at the real prompt lengths (77 CLIP tokens; T5: 256 for SD3, 512 for FLUX),
which is all the shapes depend on.
"""

from __future__ import annotations

import torch

SD35_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"


def _clip(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from plumbing.tokenizers import clip_tokenizer

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act=act,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model, clip_tokenizer(model_max_length=77)


def _t5_xxl(max_length: int):
    from transformers import T5Config, T5EncoderModel

    from plumbing.tokenizers import t5_tokenizer

    config = T5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
    )
    return T5EncoderModel(config), t5_tokenizer(model_max_length=max_length)


def _vae(scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def _sd35_medium():
    from diffusers import SD3Transformer2DModel

    from samplers.tiny import sd3_pipeline

    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    )
    encoders = [
        _clip(768, 12, 12, 3072, "quick_gelu", projection=True),
        _clip(1280, 32, 20, 5120, "gelu", projection=True),
        _t5_xxl(256),
    ]
    return sd3_pipeline(transformer, _vae(1.5305, 0.0609), encoders)


def _flux_dev():
    from diffusers import FluxTransformer2DModel

    from samplers.tiny import flux_pipeline

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    encoders = [_clip(768, 12, 12, 3072, "quick_gelu", projection=False), _t5_xxl(512)]
    return flux_pipeline(transformer, _vae(0.3611, 0.1159), encoders)


# hub id -> (builder, adapter family, adapter keyword arguments)
SKELETONS = {SD35_MEDIUM: (_sd35_medium, "sd3", {}), FLUX_DEV: (_flux_dev, "flux", {})}


def skeleton(name: str):
    """(pipeline on the meta device, family, adapter options) of a known hub id, or None."""
    if name not in SKELETONS:
        return None
    build, family, options = SKELETONS[name]
    with torch.device("meta"):
        return build(), family, dict(options)
