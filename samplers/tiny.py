"""Tiny, seeded, random pipelines of every supported family, built in code (no download).

Addressable as `tiny:sd15`, `tiny:sd2` (v-prediction), `tiny:sdxl`, `tiny:sd3`, `tiny:flux`,
`tiny:turbo`, `tiny:sdxl-turbo` and `tiny:wan` (text-to-video, 9 frames) wherever a model is taken. Same architectures as the real
models, a few thousand times smaller: for tests, benchmarks and first contact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from plumbing.tokenizers import clip_tokenizer, t5_tokenizer

RESOLUTION = 32  # pixels; every tiny VAE downsamples by 2
MAX_LENGTH = 16  # tokens per prompt


def _clip_text(with_projection: bool, hidden: int = 32, projection: int = 32):
    tokenizer = clip_tokenizer(model_max_length=MAX_LENGTH)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=projection,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    model = CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)
    return model.eval(), tokenizer


def _t5(d_model: int):
    tokenizer = t5_tokenizer(model_max_length=MAX_LENGTH)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval(), tokenizer


def _vae(latent_channels: int = 4, **kwargs) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=RESOLUTION,
        **kwargs,
    ).eval()


def _unet(cross_attention_dim: int, **kwargs) -> UNet2DConditionModel:
    """A random UNet with its output layer damped (x0.1): undamped random UNets can be chaotic over
    50 DDIM steps (a 1e-6 change of x_T moved tiny SDXL's x_0 by 0.6), and invariant checks should
    measure the code, not the chaos of an untrained network. Trained UNets are contractive too."""
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=8,
        attention_head_dim=2,
        **kwargs,
    )
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
    return unet


def _sd_schedule(**kwargs) -> dict:
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kwargs)


def _sd_pipeline(scheduler) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = _unet(32)
    torch.manual_seed(1)
    vae = _vae()
    torch.manual_seed(2)
    text_encoder, tokenizer = _clip_text(with_projection=False)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd15():
    scheduler = DDIMScheduler(**_sd_schedule(clip_sample=False, set_alpha_to_one=False, steps_offset=1))
    return _sd_pipeline(scheduler)


def build_sd2():
    scheduler = DDIMScheduler(
        **_sd_schedule(
            clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"
        )
    )
    return _sd_pipeline(scheduler)


def build_turbo():
    return _sd_pipeline(EulerDiscreteScheduler(**_sd_schedule(timestep_spacing="trailing", steps_offset=1)))


def _sdxl_pipeline(scheduler) -> StableDiffusionXLPipeline:
    torch.manual_seed(0)
    unet = _unet(
        64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
        transformer_layers_per_block=(1, 1),
    )
    torch.manual_seed(1)
    vae = _vae()
    torch.manual_seed(2)
    text_encoder, tokenizer = _clip_text(with_projection=False)
    torch.manual_seed(3)
    text_encoder_2, tokenizer_2 = _clip_text(with_projection=True)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def build_sdxl():
    return _sdxl_pipeline(EulerDiscreteScheduler(**_sd_schedule(steps_offset=1, timestep_spacing="leading")))


def build_sdxl_turbo():
    return _sdxl_pipeline(EulerDiscreteScheduler(**_sd_schedule(timestep_spacing="trailing", steps_offset=1)))


def build_sd3():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
    )
    torch.manual_seed(1)
    vae = _vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(2)
    text_encoder, tokenizer = _clip_text(with_projection=True)
    torch.manual_seed(3)
    text_encoder_2, tokenizer_2 = _clip_text(with_projection=True)
    torch.manual_seed(4)
    return sd3_pipeline(transformer, vae, [(text_encoder, tokenizer), (text_encoder_2, tokenizer_2), _t5(d_model=64)])


def sd3_pipeline(transformer, vae, encoders: list[tuple]) -> StableDiffusion3Pipeline:
    """An SD3 pipeline from its denoiser, VAE and three (text encoder, tokenizer) pairs."""
    (text_encoder, tokenizer), (text_encoder_2, tokenizer_2), (text_encoder_3, tokenizer_3) = encoders
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def build_flux():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    torch.manual_seed(1)
    vae = _vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(2)
    text_encoder, tokenizer = _clip_text(with_projection=False)
    torch.manual_seed(3)
    return flux_pipeline(transformer, vae, [(text_encoder, tokenizer), _t5(d_model=32)])


def flux_pipeline(transformer, vae, encoders: list[tuple]) -> FluxPipeline:
    """A FLUX pipeline (FLUX.1's dynamically shifted schedule) from its denoiser, VAE and two (text
    encoder, tokenizer) pairs."""
    (text_encoder, tokenizer), (text_encoder_2, tokenizer_2) = encoders
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_wan():
    """Wan 2.1's architecture: a causal 3D VAE (8x in space, 4x in time: 9 frames -> 3 latent frames),
    a DiT on (1, 2, 2) patches with rotary positions over frames, height and width, a T5 encoder."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    torch.manual_seed(1)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    torch.manual_seed(2)
    text_encoder, tokenizer = _t5(d_model=32)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )


# name -> (builder, adapter family, adapter keyword arguments)
TINY: dict[str, tuple[Callable, str, dict]] = {
    "sd15": (build_sd15, "sd", {}),
    "sd2": (build_sd2, "sd", {}),
    "sdxl": (build_sdxl, "sdxl", {}),
    "sd3": (build_sd3, "sd3", {"max_sequence_length": MAX_LENGTH}),
    "flux": (build_flux, "flux", {"resolution": RESOLUTION, "max_sequence_length": MAX_LENGTH}),
    "turbo": (build_turbo, "sd-turbo", {}),
    "sdxl-turbo": (build_sdxl_turbo, "sdxl-turbo", {}),
    "wan": (build_wan, "wan", {"resolution": RESOLUTION, "max_sequence_length": MAX_LENGTH, "default_steps": 10}),
}
