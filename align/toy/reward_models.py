"""The toy world's learned rewards, trained by the project and loaded through the real reward code.

clip     an open_clip CLIP with a small custom config (ViT 32 px / patch 4, 2-layer text tower),
         trained contrastively on toy images and captions; saved as an open_clip `local-dir:` folder.
quality  a small head on the toy CLIP's image embedding, regressing 1 for clean renders and
         1 - severity for degraded ones (blur, noise, ragged edges); read by the `aesthetic` reward.
Both are differentiable and learned, so both can be over-optimised, as real ones can.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from align.toy.pretrain import balanced_prompts, render_batch
from align.toy.stages import cosine_lr
from rewards.toy_world import BACKGROUND, COUNTS, parse_prompt

CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 96, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "size": 32}
HEAD_CONFIG = {"embed_dim": 64, "hidden": [64, 16], "activation": "gelu"}


def _new_clip():
    import open_clip

    return open_clip.model.CLIP(**CLIP_CONFIG)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - 0.5) / 0.25


def count_variants(prompt: str) -> list[str]:
    """The other counts of a single-object prompt ("two red circles" -> "a red circle", "three red
    circles"): captions that differ from it in count alone; [] for a relation prompt."""
    spec = parse_prompt(prompt)
    if spec.kind != "single":
        return []
    return [dataclasses.replace(spec, count=n).text() for n in COUNTS if n != spec.count]


def train_clip(out: Path, steps: int = 3000, batch_size: int = 128, lr: float = 1e-3) -> dict:
    import open_clip

    torch.manual_seed(0)
    rng = random.Random(2)
    clip = _new_clip()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=CLIP_CONFIG["text_cfg"]["context_length"])
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.05)
    bar = tqdm(range(steps), desc="clip", mininterval=5)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_lr(step, steps, 100)
        prompts = balanced_prompts(rng, batch_size)
        images = render_batch(prompts, [rng.randrange(2**31) for _ in prompts])
        image_features = F.normalize(clip.encode_image(_normalise(images)), dim=-1)
        text_features = F.normalize(clip.encode_text(tokenizer(prompts)), dim=-1)
        logits = clip.logit_scale.exp() * image_features @ text_features.T
        # captions repeat within a batch: every image matching a caption is a positive for it
        same = torch.tensor([[a == b for b in prompts] for a in prompts], dtype=torch.float32)
        targets = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, 4.6052)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    directory = out / "clip"
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.half().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    config = {"model_cfg": CLIP_CONFIG, "preprocess_cfg": PREPROCESS}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    report = {
        "heldout_top1_of_8": clip_top1(f"local-dir:{directory}"),
        "heldout_count_top1_of_3": clip_count_top1(f"local-dir:{directory}"),
    }
    (directory / "report.json").write_text(json.dumps(report, indent=2))
    return report


def prefers_own_caption(clip, tokenizer, feature: torch.Tensor, prompt: str, rivals: list[str]) -> int:
    """1 where the image feature scores its own caption above every rival caption, else 0."""
    from rewards.open_clip_models import text_embeddings

    texts = text_embeddings(clip, tokenizer, [prompt, *rivals], "cpu")
    return int((texts @ feature).argmax() == 0)


@torch.no_grad()
def _caption_top1(model: str, prompts: list[str], seeds: int, first_seed: int, rivals) -> float:
    """Fraction of clean renders of `prompts` (`seeds` each) that prefer their caption over `rivals(prompt)`."""
    from rewards.open_clip_models import image_embeddings, load_open_clip

    clip, tokenizer, normalisation = load_open_clip(model, None, "cpu")
    hits = []
    for seed in range(seeds):
        images = render_batch(prompts, [first_seed + seed * 1000 + i for i in range(len(prompts))])
        for feature, prompt in zip(image_embeddings(clip, images, normalisation), prompts):
            hits.append(prefers_own_caption(clip, tokenizer, feature, prompt, rivals(prompt)))
    return float(np.mean(hits))


def clip_top1(model: str, split: str = "heldout", seeds: int = 4, candidates: int = 8) -> float:
    """Fraction of held-out images whose true caption scores highest among `candidates` captions."""
    from rewards.toy_world import prompt_splits

    prompts = prompt_splits()[split]
    rng = random.Random(3)
    return _caption_top1(
        model, prompts, seeds, 10_000, lambda prompt: rng.sample([p for p in prompts if p != prompt], candidates - 1)
    )


def clip_count_top1(model: str, split: str = "heldout", seeds: int = 4) -> float:
    """Fraction of the split's single-object images whose caption scores highest among its count variants
    ("a red circle", "two red circles", "three red circles"): whether the CLIP reads how many. Chance 1/3."""
    from rewards.toy_world import prompt_splits

    prompts = [p for p in prompt_splits()[split] if count_variants(p)]
    return _caption_top1(model, prompts, seeds, 20_000, count_variants)


def degrade(images: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random degradations with a severity in [0, 1] each: blur, pixel noise, ragged edges."""
    from scipy import ndimage

    arrays = images.permute(0, 2, 3, 1).numpy().copy()
    severities = rng.uniform(0, 1, len(arrays))
    kinds = rng.integers(0, 3, len(arrays))
    background = np.asarray(BACKGROUND, np.float32) / 255
    for i, (severity, kind) in enumerate(zip(severities, kinds)):
        image = arrays[i]
        if kind == 0:
            image = ndimage.gaussian_filter(image, sigma=(0.3 + 1.5 * severity,) * 2 + (0,))
        elif kind == 1:
            image = np.clip(image + rng.normal(0, 0.02 + 0.2 * severity, image.shape), 0, 1)
        else:
            mask = np.abs(image - background).max(-1) > 0.1
            edge = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=1)
            flip = edge & (rng.random(mask.shape) < 0.15 + 0.6 * severity)
            colours = image[mask].mean(0) if mask.any() else background
            image = np.where((flip & mask)[..., None], background, image)
            image = np.where((flip & ~mask)[..., None], colours, image)
        arrays[i] = image.astype(np.float32)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(severities).float()


def train_quality(out: Path, steps: int = 1500, batch_size: int = 128, lr: float = 2e-3) -> dict:
    from rewards.aesthetic import AestheticHead
    from rewards.open_clip_models import image_embeddings, load_open_clip

    torch.manual_seed(0)
    rng = random.Random(4)
    noise_rng = np.random.default_rng(4)
    clip, _, normalisation = load_open_clip(f"local-dir:{out / 'clip'}", None, "cpu")
    head = AestheticHead(**HEAD_CONFIG)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    bar = tqdm(range(steps), desc="quality", mininterval=5)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_lr(step, steps, 50)
        prompts = balanced_prompts(rng, batch_size)
        clean = render_batch(prompts, [rng.randrange(2**31) for _ in prompts])
        half = batch_size // 2
        degraded, severity = degrade(clean[half:], noise_rng)
        images = torch.cat([clean[:half], degraded])
        targets = torch.cat([torch.ones(half), 1 - severity])
        with torch.no_grad():
            embeddings = image_embeddings(clip, images, normalisation)
        loss = F.mse_loss(head(embeddings), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    directory = out / "quality"
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(directory / "head.safetensors"))
    (directory / "head_config.json").write_text(json.dumps(HEAD_CONFIG, indent=2))
    report = quality_report(directory, f"local-dir:{out / 'clip'}")
    (directory / "report.json").write_text(json.dumps(report, indent=2))
    return report


@torch.no_grad()
def quality_report(directory: Path, clip_model: str) -> dict:
    """Mean score of clean vs degraded held-out renders, and how often clean outranks degraded."""
    from rewards.aesthetic import Aesthetic

    reward = Aesthetic(model=clip_model, pretrained=None, head=str(directory / "head.safetensors"))
    from rewards.toy_world import prompt_splits

    prompts = prompt_splits()["heldout"]
    clean = render_batch(prompts, [20_000 + i for i in range(len(prompts))])
    degraded, severity = degrade(clean, np.random.default_rng(5))
    clean_scores, degraded_scores = reward(clean, prompts), reward(degraded, prompts)
    strong = severity > 0.3
    return {
        "clean_mean": float(clean_scores.mean()),
        "degraded_mean": float(degraded_scores.mean()),
        "clean_above_degraded_severity_gt_0.3": float(
            (clean_scores > degraded_scores)[strong].float().mean()
        ),
    }


def train(stage: str, out: Path, steps: int | None = None) -> dict:
    if stage == "clip":
        return train_clip(out, **({"steps": steps} if steps else {}))
    if stage == "quality":
        return train_quality(out, **({"steps": steps} if steps else {}))
    raise ValueError(f"unknown reward-model stage {stage!r}")
