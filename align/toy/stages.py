"""What the toy models' pretraining stages share (align/toy/pretrain.py for the still world,
align/toy/video.py for the video one): the learning-rate schedule, the autoencoder loop and writing
the encoded data set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def fit_autoencoder(vae, batch, steps: int, lr: float, kl_weight: float, desc: str) -> None:
    """Train `vae` on `batch()` (inputs in [-1, 1]) for `steps`: L1 + L2 reconstruction of a posterior
    sample and a small KL, AdamW on a cosine schedule; leaves it in eval mode."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    bar = tqdm(range(steps), desc=desc, mininterval=5)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_lr(step, steps, 100)
        x = batch()
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = (reconstruction - x).abs().mean() + (reconstruction - x).pow(2).mean()
        loss = loss + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def write_data(out: Path, prompts: list[str], encode, batch_size: int, desc: str) -> dict:
    """OUT/data.safetensors (fp16 latents, example i from prompt i and seed i) and OUT/data.json, by
    `encode(prompts, seeds)` a batch at a time."""
    seeds = list(range(len(prompts)))
    latents = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, mininterval=5):
        latents.append(encode(prompts[start : start + batch_size], seeds[start : start + batch_size]).half())
    save_file({"latents": torch.cat(latents)}, str(out / "data.safetensors"))
    (out / "data.json").write_text(json.dumps({"prompts": prompts, "seeds": seeds}))
    return {"count": len(prompts)}
