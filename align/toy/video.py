"""The toy text-to-video model: a real Wan 2.1 pipeline (WanPipeline) with tiny components, trained from
scratch on the toy video world (rewards/toy_video.py) by `align pretrain-toy --world video`.

9 frames of 32 x 32; Wan's causal 3D VAE with no temporal compression and 4x in space (latents
[4, 9, 8, 8]); a Wan DiT on (1, 2, 2) patches (144 tokens, rotary positions over frame, row and
column); a small UMT5 encoder over a word-level tokenizer of the grammar. The VAE is trained on single
frames with every causal convolution's past taps at zero, so it codes each frame alone and the motion
is the transformer's to learn. Stages as the still model's (align/toy/pretrain.py): vae, data,
diffusion (resumable), export; the directional swap test is `direction_swap_test`.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import numpy as np
import torch

from align.toy import model as still_model
from align.toy.pretrain import DiffusionTrainer
from align.toy.stages import fit_autoencoder, write_data
from rewards.toy_video import (
    DIRECTIONS,
    FRAMES,
    SPEEDS,
    make_clip,
    parse_video_prompt,
    swap_direction,
    video_prompt_splits,
)
from samplers.toy import DEFAULT_GUIDANCE, VIDEO_ADAPTER_DEFAULTS

MAX_LENGTH = 12  # tokens: the longest prompt is 10 words + end
TEXT_WIDTH = 64
WIDTH, LAYERS, HEAD_DIM = 128, 6, 32
LATENT_CHANNELS = 4


def build_tokenizer():
    from plumbing.tokenizers import t5_tokenizer

    words = still_model.toy_words() + list(DIRECTIONS) + list(SPEEDS) + ["moving"]
    return t5_tokenizer(words, model_max_length=MAX_LENGTH)


def build_text_encoder(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_WIDTH,
        d_kv=16,
        d_ff=2 * TEXT_WIDTH,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return UMT5EncoderModel(config)


def build_vae():
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(
        base_dim=16,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, False],
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
        scale_factor_temporal=1,
        scale_factor_spatial=4,
    )
    with torch.no_grad():
        for weight in causal_past_taps(vae):
            weight.zero_()
    return vae


def causal_past_taps(vae) -> list[torch.Tensor]:
    """The taps of every causal 3D convolution that read earlier frames ([:, :, :-1] of a kernel of
    depth 3): at zero, each frame is coded alone."""
    return [
        m.weight[:, :, :-1]
        for m in vae.modules()
        if isinstance(m, torch.nn.Conv3d) and m.weight.ndim == 5 and m.weight.shape[2] > 1
    ]


def build_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=WIDTH // HEAD_DIM,
        attention_head_dim=HEAD_DIM,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        text_dim=TEXT_WIDTH,
        freq_dim=64,
        ffn_dim=2 * WIDTH,
        num_layers=LAYERS,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def build_pipeline(seed: int = 0, vae=None, transformer=None, text_encoder=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder if text_encoder is not None else build_text_encoder(tokenizer),
        vae=vae if vae is not None else build_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        transformer=transformer if transformer is not None else build_transformer(),
    )


def render_clips(prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """[B, F, 3, H, W] in [0, 1]."""
    clips = np.stack([make_clip(p, s)[0] for p, s in zip(prompts, seeds)])
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).contiguous()


@functools.cache
def _pools(split: str) -> dict[str, list[str]]:
    prompts = video_prompt_splits()[split]
    return {kind: [p for p in prompts if parse_video_prompt(p).kind == kind] for kind in ("single", "relation")}


def balanced_prompts(rng: random.Random, count: int, split: str = "pretrain") -> list[str]:
    """Half single-object prompts, half relation prompts, drawn from `split`."""
    pools = _pools(split)
    return [rng.choice(pools["single" if i % 2 == 0 else "relation"]) for i in range(count)]


# --- stage 1: the VAE, on single frames ---------------------------------------------------------


def train_vae(
    out: Path,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    calibrate: int = 128,
    resume: bool = False,
) -> dict:
    """The VAE stage: `steps` on single frames of random clips, from scratch or (`resume`) from OUT/vae,
    then calibrated and saved to OUT/vae with its report."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    rng = random.Random(0)
    if resume and not (out / "vae").is_dir():
        raise ValueError(f"--resume: no VAE at {out / 'vae'}; run the vae stage without --resume first")
    vae = AutoencoderKLWan.from_pretrained(out / "vae").train() if resume else build_vae()

    def batch() -> torch.Tensor:
        prompts = balanced_prompts(rng, batch_size // 4)
        clips = render_clips(prompts, [rng.randrange(2**31) for _ in prompts])
        frames = clips[:, rng.sample(range(FRAMES), 4)].flatten(0, 1)  # 4 frames of each clip
        return frames.unsqueeze(2) * 2 - 1  # [B, 3, 1, H, W]: one frame, the past taps read padding

    fit_autoencoder(vae, batch, steps, lr, kl_weight, "video vae")
    if any(bool(w.any()) for w in causal_past_taps(vae)):
        raise RuntimeError("the VAE's past taps moved off zero: it would mix frames")
    report = _calibrate_vae(vae, rng, calibrate)
    vae.register_to_config(_name_or_path="vae")  # the working directory's path must not ship with it
    vae.save_pretrained(out / "vae")
    (out / "vae" / "report.json").write_text(json.dumps(report, indent=2))
    return report


@torch.no_grad()
def _calibrate_vae(vae, rng: random.Random, count: int = 128) -> dict:
    """Wan's per-channel latents_mean / latents_std from `count` clips, and what the verifier reads
    from their reconstructions."""
    from rewards.geneval_video import evaluate_clips

    prompts = balanced_prompts(rng, count)
    clips = render_clips(prompts, [rng.randrange(2**31) for _ in prompts])
    latents = vae.encode(clips.transpose(1, 2) * 2 - 1).latent_dist.mean
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.transpose(0, 1).flatten(1).std(dim=1)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    reconstruction = (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1).transpose(1, 2)
    results = evaluate_clips(reconstruction, prompts)
    return {
        "latents_mean": mean.tolist(),
        "latents_std": std.tolist(),
        "reconstruction_l1": float((reconstruction - clips).abs().mean()),
        "verifier_accuracy_on_reconstructions": float(np.mean([r["all"] for r in results])),
    }


# --- stage 2: the encoded clips ------------------------------------------------------------------


@torch.no_grad()
def build_data(out: Path, count: int = 20_000, batch_size: int = 64) -> dict:
    from diffusers import AutoencoderKLWan

    from samplers.adapters.wan import encode_videos

    vae = AutoencoderKLWan.from_pretrained(out / "vae").eval()

    def encode(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return encode_videos(vae, render_clips(prompts, seeds))

    return write_data(out, balanced_prompts(random.Random(1), count), encode, batch_size, "video data")


# --- stage 3: rectified flow on clip latents -----------------------------------------------------


class VideoDiffusionTrainer(DiffusionTrainer):
    """The Wan transformer and the UMT5 encoder, trained jointly by rectified flow; EMA ships."""

    trained = ("transformer", "text_encoder")

    def __init__(
        self,
        out: Path,
        *,
        motion_weight: float = 0.0,
        direction_weight: float = 0.0,
        direction_temperature: float = 0.05,
        **options,
    ):
        super().__init__(out, **options)
        self.motion_weight, self.direction_weight = motion_weight, direction_weight
        self.direction_temperature = direction_temperature

    def loss(self, noisy, sigma, prompts, target) -> torch.Tensor:
        """The rectified-flow loss, plus two terms for the motion (both off by default):
        - `motion_weight`: the error of the velocity's frame-to-frame differences. The VAE codes each
          frame alone, so a latent's frame differences are the motion; an error constant in time
          (a colour, a shape) has none, so the term weighs what moves.
        - `direction_weight`: each captioned clip's prompt must predict its velocity better than the
          same prompt with the direction reversed, a logistic loss on the two squared errors' gap
          (scaled by `direction_temperature`): the word is made to matter."""
        residual = self.predict(noisy, sigma, prompts) - target
        error = residual.pow(2)
        loss = error.mean()
        if self.motion_weight:
            loss = loss + self.motion_weight * residual.diff(dim=2).pow(2).mean()
        captioned = [i for i, p in enumerate(prompts) if p]
        if self.direction_weight and captioned:
            reversed_prompts = [swap_direction(prompts[i]) for i in captioned]
            swapped = self.predict(noisy[captioned], sigma[captioned], reversed_prompts)
            own = error[captioned].flatten(1).mean(1)
            other = (swapped - target[captioned]).pow(2).flatten(1).mean(1)
            margin = (other - own) / self.direction_temperature
            loss = loss + self.direction_weight * torch.nn.functional.softplus(-margin).mean()
        return loss

    def build_pipeline(self, seed: int):
        from diffusers import AutoencoderKLWan

        return build_pipeline(seed, vae=AutoencoderKLWan.from_pretrained(self.out / "vae").eval())

    @staticmethod
    def kind(prompt: str) -> str:
        return parse_video_prompt(prompt).kind

    def predict(self, noisy, sigma, prompts):
        embeds, _ = self.pipeline.encode_prompt(
            prompt=prompts, do_classifier_free_guidance=False, max_sequence_length=MAX_LENGTH
        )
        return self.pipeline.transformer(
            hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=embeds, return_dict=False
        )[0]

    def ema_pipeline(self):
        return build_pipeline(
            vae=self.pipeline.vae, transformer=self.ema["transformer"], text_encoder=self.ema["text_encoder"]
        )

    def eval_adapter(self):
        from samplers.adapters.wan import WanAdapter

        options = {k: v for k, v in VIDEO_ADAPTER_DEFAULTS.items() if k != "family"}
        return WanAdapter(self.ema_pipeline(), guidance_scale=DEFAULT_GUIDANCE, **options)

    @staticmethod
    def splits() -> dict[str, list[str]]:
        return video_prompt_splits()

    @staticmethod
    def swap_test(adapter, prompts: list[str], seeds: int) -> dict:
        return direction_swap_test(adapter, prompts, seeds=seeds)


@torch.no_grad()
def direction_swap_test(adapter, prompts, seeds: int = 2, num_steps: int | None = None) -> dict:
    """Does the model listen to the direction word? Each prompt and its direction swap (left <-> right,
    up <-> down) are drawn with the same seeds; a pair *flips* when the first object's velocity along
    the prompt's axis changes sign. The keys of align.evaluate.swap_test's result."""
    from align.evaluate import grid_differences
    from rewards.geneval import detect
    from rewards.geneval_video import largest, velocity
    from samplers.grid import generate_grid

    clips, flat, _ = generate_grid(adapter, prompts, seeds, num_steps)
    swapped, _, _ = generate_grid(adapter, [swap_direction(p) for p in prompts], seeds, num_steps)

    def along(clip, prompt):
        spec = parse_video_prompt(prompt)
        frames = [detect(frame) for frame in clip.permute(0, 2, 3, 1).float().cpu().numpy()]
        points = [(t, o.cx, o.cy) for t, objects in enumerate(frames) if (o := largest(objects, spec.scene.colour))]
        v = velocity(points)
        dx, dy = DIRECTIONS[spec.direction]
        return None if v is None else float(v[0] * dx + v[1] * dy)

    flips = detected = 0
    for clip, other, prompt in zip(clips, swapped, flat):
        before, after = along(clip, prompt), along(other, prompt)
        if before is None or after is None:
            continue
        detected += 1
        flips += int(before * after < 0)
    return {
        "flip_fraction": flips / len(flat),
        "flip_fraction_detected": flips / detected if detected else float("nan"),
        "pairs": len(flat),
        "detected": detected,
        "flips": ("direction", "the first object tracked in both clips"),
        **grid_differences(clips, swapped, seeds),
    }
