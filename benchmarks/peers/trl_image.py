"""The peer side of vs_peers.py's image cases: trl 0.23.1's DDPOTrainer or AlignPropTrainer, one
`trainer.step()` per epoch, on a tiny SD-1.5-style pipeline this script builds in code.

Runs in the virtualenv of trl-0.23.txt (vs_peers.py makes it), never in ours:

    python trl_image.py --build-only --model-dir DIR        # the tiny pipeline, written once
    python trl_image.py --which ddpo --model-dir DIR --epochs 3 --warmup 1 --steps 10

Prints `CONFIG {json}` (every setting that bears on time) and `RESULT {json}`: the median seconds of
the epochs after the warm-up, each epoch's, and the process's peak resident set (MiB).

What the two sides share: 4 prompts (each batch holds each once), batch 4, `--steps` DDIM steps at
eta 1, guidance 5, LoRA rank 4 on to_q/to_k/to_v/to_out.0 (trl's own pipeline class sets it up), the
mean pixel value as the reward, AdamW with weight decay 1e-4, gradients clipped at 1. DDPO: the
advantage is the batch-standardised reward clipped at 5, ratio clip 1e-4, every step trained, one
optimiser step per epoch, lr 3e-4. AlignProp: gradients through every step (no truncation, as ours
with `truncation_min` = steps), trl's gradient checkpointing, lr 1e-3.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["a photo of a cat", "a red car", "a bowl of fruit", "a snowy mountain"]  # vs_peers.py gives ours these too


def byte_alphabet() -> list[str]:
    """One printable character per byte, as byte-level BPE (GPT-2's, CLIP's) spells bytes: printable
    Latin-1 bytes stand for themselves, the others for the characters from U+0100 on."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)}
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def write_tokenizer(directory: Path) -> None:
    """A CLIP tokenizer with a byte alphabet and no merges (so each character is a token)."""
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")


def build(model_dir: Path) -> None:
    """A tiny SD-1.5-style pipeline (random weights, 64 px images from 32 x 32 latents)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=64,
    )
    with tempfile.TemporaryDirectory() as scratch:
        write_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(str(model_dir))


def trainer(args, logdir: str):
    """trl's trainer for `args.which`, with the settings above."""
    from accelerate import PartialState
    from trl import (
        AlignPropConfig,
        AlignPropTrainer,
        DDPOConfig,
        DDPOTrainer,
        DefaultDDPOStableDiffusionPipeline,
    )

    PartialState()  # the trainers log through accelerate before they make their Accelerator
    prompts = itertools.cycle(PROMPTS)
    shared = {
        "num_epochs": args.epochs,
        "sample_num_steps": args.steps,
        "sample_eta": 1.0,
        "sample_guidance_scale": 5.0,
        "train_batch_size": 4,
        "train_gradient_accumulation_steps": 1,
        "train_adam_weight_decay": 1e-4,
        "train_max_grad_norm": 1.0,
        "mixed_precision": "no",
        "log_with": None,
        "logdir": logdir,
        "seed": 0,
        "save_freq": 10**9,  # step() saves the trainer's state every save_freq epochs: never here
    }
    pipeline = DefaultDDPOStableDiffusionPipeline(args.model_dir, use_lora=True)

    def prompt():
        return next(prompts), {}

    def brightness(images, prompts, metadata):
        return images.float().mean(dim=(1, 2, 3)), {}

    if args.which == "ddpo":
        config = DDPOConfig(
            **shared,
            sample_batch_size=4,
            sample_num_batches_per_epoch=1,
            train_learning_rate=3e-4,
            train_num_inner_epochs=1,
            train_adv_clip_max=5.0,
            train_clip_range=1e-4,
            train_timestep_fraction=1.0,
            train_cfg=True,
            per_prompt_stat_tracking=False,
        )
        return DDPOTrainer(config, brightness, prompt, pipeline), config
    config = AlignPropConfig(
        **shared,
        train_learning_rate=1e-3,
        truncated_backprop_rand=False,
        truncated_backprop_timestep=0,  # every step keeps its gradient
    )
    return AlignPropTrainer(config, brightness, prompt, pipeline), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("ddpo", "alignprop"), default="ddpo")
    parser.add_argument("--model-dir", required=True, help="the tiny pipeline (built there by --build-only)")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="epochs left out of the median")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.build_only:
        build(Path(args.model_dir))
        return
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as logdir:
        os.chdir(logdir)  # whatever the trainer writes stays in the scratch folder
        trl_trainer, config = trainer(args, logdir)
        settings = {k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool))}
        unet = trl_trainer.sd_pipeline.unet
        settings |= {
            "which": args.which,
            "trainable_params": sum(p.numel() for p in unet.parameters() if p.requires_grad),
            "prompts": PROMPTS,
            "threads": torch.get_num_threads(),
            "resolution": unet.config.sample_size * trl_trainer.sd_pipeline.sd_pipeline.vae_scale_factor,
        }
        print("CONFIG " + json.dumps(settings, default=str), flush=True)
        times, global_step = [], 0
        for epoch in range(args.epochs):
            start = time.perf_counter()
            global_step = trl_trainer.step(epoch, global_step)
            times.append(time.perf_counter() - start)
    result = {
        "sec_per_epoch_median": statistics.median(times[args.warmup :]),
        "sec_per_epoch_all": [round(t, 4) for t in times],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
