"""Proxy reward models: small networks fitted to a gold reward's labels of a model's own samples.

Gao et al. 2023 ("Scaling Laws for Reward Model Overoptimization") measure over-optimisation with a
gold reward and proxies trained on a finite number of its labels: optimising a proxy first raises the
gold score, then lowers it, and the turn comes later the more labels the proxy saw. On the toy world
the gold reward is exact (geneval-toy), so the experiment runs on a CPU: `align reward-model train`
labels N samples of a model and fits K proxies here; the `proxy` reward reads them back.

ProxyNet     a CNN on the 32 x 32 image, conditioned on the prompt by FiLM from its words (each word
             hashed to one of `buckets` embeddings, kept in order: "red circle left of blue square"
             and "blue circle left of red square" differ). Its output is a logit; the reward is its
             sigmoid, fitted to the gold value in [0, 1] by binary cross-entropy.
fit_proxy    trains one ProxyNet on (images, prompts, targets), reporting its validation fit.
ProxyReward  K members read from a directory (manifest.json + member-k.safetensors), combined as an
             ensemble (rewards/ensemble.py: mean, worst-case, mean - λ std); `disagreement` is a batch's
             mean std between members, the over-optimisation signal of an ensemble (align/monitoring.py).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from rewards.base import Reward, register_reward
from rewards.ensemble import ensemble_values
from rewards.transforms import resize

MANIFEST = "manifest.json"
KIND = "diffusion-align proxy reward"
ARCH = {"width": 32, "embed": 32, "buckets": 512, "max_words": 12, "size": 32}


def word_ids(prompts: list[str], buckets: int, max_words: int) -> torch.Tensor:
    """[B, max_words] bucket ids (1..buckets; 0 pads), one per word in order (crc32: stable across runs)."""
    rows = []
    for prompt in prompts:
        ids = [1 + zlib.crc32(word.encode()) % buckets for word in prompt.lower().split()][:max_words]
        rows.append(ids + [0] * (max_words - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


class ProxyNet(torch.nn.Module):
    def __init__(self, width: int = 32, embed: int = 32, buckets: int = 512, max_words: int = 12, size: int = 32):
        super().__init__()
        self.buckets, self.max_words, self.size = buckets, max_words, size
        channels = [3, width, width, 2 * width, 2 * width]
        layers = []
        for i, (a, b) in enumerate(zip(channels, channels[1:])):
            layers += [torch.nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1), torch.nn.GELU()]
        self.convolutions = torch.nn.Sequential(*layers)  # 32 -> 4
        self.words = torch.nn.Embedding(buckets + 1, embed, padding_idx=0)
        self.text = torch.nn.Linear(max_words * embed, 4 * width)  # FiLM: a scale and a shift per channel
        cells = 2 * width * (size // 8) ** 2
        self.head = torch.nn.Sequential(torch.nn.Linear(cells, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))

    def forward(self, images: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1], words [B, max_words] -> logits [B]."""
        features = self.convolutions((resize(images, self.size, self.size) - 0.5) / 0.25)
        scale, shift = self.text(self.words(words).flatten(1)).chunk(2, dim=-1)
        features = features * (1 + scale[..., None, None]) + shift[..., None, None]
        return self.head(features.flatten(1)).squeeze(-1)

    def logits(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self(images, word_ids(prompts, self.buckets, self.max_words).to(images.device))


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def fit_proxy(
    images: torch.Tensor,
    prompts: list[str],
    targets: torch.Tensor,
    validation: tuple[torch.Tensor, list[str], torch.Tensor],
    *,
    seed: int = 0,
    epochs: int = 60,
    lr: float = 2e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-2,
    arch: dict | None = None,
) -> tuple[ProxyNet, dict]:
    """One proxy fitted to targets [N] in [0, 1] by binary cross-entropy on its logits (AdamW, a cosine
    learning rate). Returns the net (eval mode) and its fit: validation MSE and correlation with gold."""
    torch.manual_seed(seed)
    net = ProxyNet(**(ARCH | (arch or {})))
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(prompts) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    words = word_ids(prompts, net.buckets, net.max_words)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(prompts), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(net(images[rows], words[rows]), targets[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    net.eval()
    held_images, held_prompts, held_targets = validation
    with torch.no_grad():
        predicted = torch.sigmoid(net.logits(held_images, held_prompts))
        fitted = torch.sigmoid(net.logits(images, prompts))
    return net, {
        "validation_mse": float(((predicted - held_targets) ** 2).mean()),
        "validation_correlation": correlation(predicted, held_targets),
        "train_mse": float(((fitted - targets) ** 2).mean()),
    }


def save_proxies(out: Path, nets: list[ProxyNet], manifest: dict) -> None:
    """member-k.safetensors per net and manifest.json ({"kind", "arch", "members": [...], ...})."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for k, net in enumerate(nets):
        save_file({n: p.detach().contiguous() for n, p in net.state_dict().items()}, out / f"member-{k}.safetensors")
    (out / MANIFEST).write_text(json.dumps(manifest | {"kind": KIND}, indent=2) + "\n")


def read_manifest(path: str | Path) -> dict:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise ValueError(
            f"proxy reward {path}: no {MANIFEST} there; train one with `align reward-model train --out {path}`"
        )
    data = json.loads(manifest.read_text())
    if data.get("kind") != KIND or not data.get("members"):
        raise ValueError(f"proxy reward {path}: {manifest} is not a proxy reward's manifest (kind {KIND!r})")
    return data


def load_proxies(path: str | Path) -> tuple[list[ProxyNet], dict]:
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    nets = []
    for k in range(len(manifest["members"])):
        net = ProxyNet(**(ARCH | manifest.get("arch", {})))
        net.load_state_dict(load_file(Path(path) / f"member-{k}.safetensors"))
        nets.append(net.eval().requires_grad_(False))
    return nets, manifest


class ProxyReward(Reward):
    differentiable = True

    def __init__(
        self,
        path: str,
        mode: str = "mean",
        penalty_weight: float = 1.0,
        members: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        ensemble_values(torch.zeros(1, 1), mode, penalty_weight)  # checks the settings
        nets, self.manifest = load_proxies(path)
        self.members = torch.nn.ModuleList(nets).to(self.device)
        count = len(nets)
        self.optimised = list(range(count)) if members is None else [int(k) for k in members]
        if not self.optimised or any(not 0 <= k < count for k in self.optimised):
            raise ValueError(f"proxy reward {path}: members {members} must name some of its {count} members 0..{count - 1}")
        self.mode, self.penalty_weight = mode, penalty_weight

    def member_values(self, images: torch.Tensor, prompts: list[str], members: list[int] | None = None):
        """[K, B]: each member's reward (all, or those listed)."""
        chosen = range(len(self.members)) if members is None else members
        return torch.stack([torch.sigmoid(self.members[k].logits(images, prompts)) for k in chosen])

    def score(self, images, prompts):
        return ensemble_values(self.member_values(images, prompts, self.optimised), self.mode, self.penalty_weight)

    @torch.no_grad()
    def member_spread(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """[B]: the std between every member's (optimised or not) reward for each image; 0 for one proxy."""
        if len(self.members) < 2:
            return torch.zeros(len(prompts), device=images.device)
        spreads = [
            self.member_values(images[i : i + self.chunk_size].to(self.device).float(), prompts[i : i + self.chunk_size])
            .std(0, unbiased=False)
            for i in range(0, len(prompts), self.chunk_size)
        ]
        return torch.cat(spreads).to(images.device)

    def disagreement(self, images: torch.Tensor, prompts: list[str]) -> float:
        """The batch's mean member_spread: how far off the samples the members were fitted on it is."""
        return float(self.member_spread(images, prompts).mean())


register_reward(
    "proxy",
    differentiable=True,
    weights="trained by `align reward-model train` (path=DIR)",
    description="a learned proxy of a gold reward (one or an ensemble: mode mean / worst / uncertainty)",
)(ProxyReward)
