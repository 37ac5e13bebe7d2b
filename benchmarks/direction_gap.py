"""Does a toy video model use its direction word? The denoising error with the prompt as written
against the same prompt with its direction reversed (and, for scale, with a colour changed), per noise
level, on rendered clips.

    python benchmarks/direction_gap.py [PIPELINE_DIR ...] [--prompts 64] [--seed 0]

Default: the shipped `toy-video`. A clip of each of `--prompts` train-split prompts is rendered and
encoded by the pipeline's VAE (normalised as the pretraining's data are) and noised at each sigma, and
the transformer's velocity error is measured three times with the same noise: conditioned on the
prompt, on its direction swap ("moving left" -> "moving right") and on the prompt with its first colour
changed. A model that uses a word predicts worse when the word is wrong where the word decides the
clip; a direction gap near zero at every sigma, beside a colour gap well above it, is a model deaf to
its direction word. A second table: how far the transformer's output moves with its input when the noise
is rolled by one token across or one frame (`shift_equivariance`): near 0, it has little absolute
position to place an object by.
"""

from __future__ import annotations

import argparse
import random

import torch

SIGMAS = (0.3, 0.6, 0.8, 0.9, 0.95, 0.99)


def recoloured(prompt: str) -> str:
    """The prompt with its first colour word replaced by the palette's next: a word the model reads."""
    from rewards.toy_world import COLOURS

    names = list(COLOURS)
    words = prompt.split()
    first = next(i for i, w in enumerate(words) if w in COLOURS)
    words[first] = names[(names.index(words[first]) + 1) % len(names)]
    return " ".join(words)


def embed(pipeline, texts: list[str]) -> torch.Tensor:
    from align.toy.video import MAX_LENGTH

    return pipeline.encode_prompt(
        prompt=texts, do_classifier_free_guidance=False, max_sequence_length=MAX_LENGTH
    )[0]


def velocity(pipeline, noisy: torch.Tensor, sigma: float, embeds: torch.Tensor) -> torch.Tensor:
    """The transformer's velocity for `noisy` latents at `sigma`, conditioned on prompt embeddings."""
    timestep = torch.full((len(noisy),), sigma * 1000)
    return pipeline.transformer(
        hidden_states=noisy, timestep=timestep, encoder_hidden_states=embeds, return_dict=False
    )[0]


@torch.no_grad()
def word_gaps(pipeline, prompts: list[str], seed: int = 0, sigmas=SIGMAS) -> list[dict]:
    """Per sigma: the mean squared velocity error with the prompt as written, and the mean gaps (with
    SEs) when the direction is reversed and when the first colour is changed, over `prompts` (one
    rendered clip each, seeds `seed` + i)."""
    from align.toy.video import render_clips
    from rewards.toy_video import swap_direction
    from samplers.adapters.wan import encode_videos

    x0 = encode_videos(pipeline.vae, render_clips(prompts, [seed + i for i in range(len(prompts))]))
    texts = {"own": embed(pipeline, prompts)}
    for word, change in (("direction", swap_direction), ("colour", recoloured)):
        texts[word] = embed(pipeline, [change(p) for p in prompts])
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=generator)
        noisy, target = (1 - sigma) * x0 + sigma * noise, noise - x0
        errors = {
            name: (velocity(pipeline, noisy, sigma, embeds) - target).pow(2).flatten(1).mean(1)
            for name, embeds in texts.items()
        }
        row = {"sigma": sigma, "own": float(errors["own"].mean())}
        for word in ("direction", "colour"):
            gap = errors[word] - errors["own"]
            row[word] = (float(gap.mean()), float(gap.std() / len(gap) ** 0.5))
        rows.append(row)
    return rows


@torch.no_grad()
def shift_equivariance(pipeline, prompts: list[str], seed: int = 0, sigmas=(0.99, 0.9, 0.6)) -> list[dict]:
    """How much the transformer knows where it is: its velocity for noise rolled by one token (2 latent
    px across, or 1 frame) against its velocity for the noise, rolled; compared away from the seam and
    scaled by the difference between two noises' velocities. Near 0: the output moves with the input,
    and the model has little absolute position to place an object by."""
    from rewards.toy_video import FRAMES, RESOLUTION

    embeds = embed(pipeline, prompts)
    size = RESOLUTION // pipeline.vae_scale_factor_spatial
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(
        len(prompts), pipeline.transformer.config.in_channels, FRAMES, size, size, generator=generator
    )
    y = torch.randn(x.shape, generator=generator)
    rows = []
    for sigma in sigmas:
        fx, fy = velocity(pipeline, x, sigma, embeds), velocity(pipeline, y, sigma, embeds)
        row = {"sigma": sigma}
        for name, dim, shift, inside in (("across", 4, 2, slice(3, 7)), ("frames", 2, 1, slice(2, 8))):
            moved = velocity(pipeline, torch.roll(x, shift, dims=dim), sigma, embeds) - torch.roll(
                fx, shift, dims=dim
            )
            width = inside.stop - inside.start
            row[name] = float(
                moved.narrow(dim, inside.start, width).norm()
                / (fx - fy).narrow(dim, inside.start, width).norm()
            )
        rows.append(row)
    return rows


def main() -> None:
    from diffusers import WanPipeline

    from rewards.toy_video import video_prompt_splits
    from samplers.toy import VIDEO_PIPELINE_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="*", default=[str(VIDEO_PIPELINE_DIR)])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prompts = random.Random(args.seed).sample(video_prompt_splits()["train"], args.prompts)
    gaps, shifts = {}, {}
    for path in args.pipelines:
        pipeline = WanPipeline.from_pretrained(path, torch_dtype=torch.float32)
        gaps[path], shifts[path] = (
            word_gaps(pipeline, prompts, args.seed),
            shift_equivariance(pipeline, prompts[:16], args.seed),
        )
    print(
        "| pipeline | sigma | error, the prompt | gap, direction reversed (+- SE) | gap, colour changed (+- SE) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for path, rows in gaps.items():
        for row in rows:
            (d, d_se), (c, c_se) = row["direction"], row["colour"]
            print(
                f"| {path} | {row['sigma']} | {row['own']:.4f} | {d:+.5f} +- {d_se:.5f} | {c:+.5f} +- {c_se:.5f} |"
            )
    print()
    print("| pipeline | sigma | shift error, 2 latent px across | shift error, 1 frame |")
    print("| --- | --- | --- | --- |")
    for path, rows in shifts.items():
        for row in rows:
            print(f"| {path} | {row['sigma']} | {row['across']:.3f} | {row['frames']:.3f} |")


if __name__ == "__main__":
    main()
