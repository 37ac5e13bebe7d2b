"""`align reward-model train`: label a model's samples with a gold reward and fit proxies to them.

The samples are what the policy starts from: N images of the model (ODE, each on its own seed) on the
prompts of one split, one prompt drawn at random per image. A fixed share of them (`validation`) is
kept out of every member's fit and reports how well the proxy tracks the gold reward there. Member k of
an ensemble fits the same samples from its own seed (initialisation and order), as Coste et al.'s
ensembles do: the members agree where the labels pin the gold reward down and disagree off them.
Member 0 is the proxy a single-member run of the same seed fits. Gao et al.'s proxies of growing N are
separate runs of this command; with the same --seed, a smaller N's samples are the first of a larger's.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

SEED_OFFSET = 1_000_003  # sample seeds far from the evaluation's 0..n-1, and apart for each --seed


def label_samples(adapter, prompts: list[str], gold, count: int, seed: int, num_steps: int | None, batch: int = 64):
    """count images of `adapter` on prompts drawn from `prompts` -> (images, prompts, gold values)."""
    rng = random.Random(seed)
    chosen = [rng.choice(prompts) for _ in range(count)]
    seeds = [SEED_OFFSET * (seed + 1) + i for i in range(count)]  # a smaller count's are a larger's first
    images = adapter.generate(chosen, seeds, num_steps=num_steps, batch_size=batch).float().cpu()
    with torch.no_grad():
        values = gold(images, chosen)  # a reward scores in chunks of its own
    return images, chosen, values.float().cpu()


def train_reward_model(args) -> dict:
    from align.recipes import load_prompts
    from align.runs import load_model
    from rewards.base import build_reward
    from rewards.proxy import ARCH, fit_proxy, save_proxies

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; choose another --out (a proxy is never written over)")
    if args.samples < 10:
        raise ValueError(f"--samples {args.samples}: a proxy needs at least 10 labelled samples")
    if not 0 < args.validation < 1:
        raise ValueError(f"--validation {args.validation}: give the held-out share in (0, 1), such as 0.2")
    started = time.time()
    torch.manual_seed(args.seed)
    adapter = load_model(args.model, device="cpu", dtype="float32")
    gold = build_reward(args.gold)
    images, prompts, values = label_samples(
        adapter, load_prompts(args.prompts), gold, args.samples, args.seed, args.steps
    )
    held = max(1, round(args.validation * args.samples))
    validation = (images[:held], prompts[:held], values[:held])
    arch = ARCH | {"width": args.width}
    nets, members = [], []
    for k in range(args.members):
        net, fit = fit_proxy(
            images[held:],
            prompts[held:],
            values[held:],
            validation,
            seed=args.seed * 1000 + k,
            epochs=args.epochs,
            lr=args.lr,
            arch=arch,
        )
        nets.append(net)
        members.append({"file": f"member-{k}.safetensors", "seed": args.seed * 1000 + k, **fit})
    manifest = {
        "arch": arch,
        "members": members,
        "gold": args.gold,
        "model": args.model,
        "prompts": args.prompts,
        "samples": args.samples,
        "validation_samples": held,
        "gold_mean": float(values.mean()),
        "seed": args.seed,
        "epochs": args.epochs,
        "seconds": round(time.time() - started, 1),
    }
    save_proxies(out, nets, manifest)
    return manifest


def format_manifest(manifest: dict) -> str:
    lines = [
        f"{len(manifest['members'])} proxy member(s) of {manifest['gold']} on {manifest['samples']} samples of "
        f"{manifest['model']} ({manifest['prompts']} prompts; gold mean {manifest['gold_mean']:.3f}), "
        f"{manifest['seconds']:.0f} s"
    ]
    for member in manifest["members"]:
        lines.append(
            f"  {member['file']}: validation corr {member['validation_correlation']:.3f}, "
            f"MSE {member['validation_mse']:.4f} (train MSE {member['train_mse']:.4f}) "
            f"on {manifest['validation_samples']} held-back samples"
        )
    return "\n".join(lines)
