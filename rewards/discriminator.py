"""An adversarial reward: a trainable head on frozen DINOv2 features (Adv-GRPO, Mao et al. 2025, "The
Image as Its Own Reward: Reinforcement Learning with Adversarial Reward for Image Generation",
arXiv:2511.20256).

The head scores an image as real (reference) or generated: a global MLP on the CLS feature and, with
`local=True`, the same kind of MLP on every patch feature, averaged (the paper's global and local
rewards). The reward is the logit D(x) = (global + local) / 2, higher meaning "looks like the
references". Between policy updates the training loop calls `update(real, fake)`, one step of the
hinge loss (Lim & Ye 2017, "Geometric GAN"; as in Miyato et al. 2018's SN-GAN):

    L_D = mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))

so the reward keeps moving with the generator and is hard to hack. Under torch.distributed the head
gradients are averaged over processes, so every process holds the same discriminator. `state_dict()` holds exactly what
changes (head weights, optimiser state, step count), in tensors and Python scalars, and
`load_state_dict()` restores it, so a resumed run continues the same adversarial game.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rewards.base import Reward, check_images, register_reward
from rewards.dino_backbone import DINO_MODEL, DinoBackbone


def head(dim: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.LayerNorm(dim),
        torch.nn.Linear(dim, hidden),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(hidden, 1),
    )


def average_gradients(parameters) -> None:
    """Under torch.distributed (`accelerate launch`), average the gradients over processes, so every
    process takes the same step and keeps the same discriminator (the policy's DDP does the same)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= dist.get_world_size()


def hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


class Discriminator(Reward):
    differentiable = True

    def __init__(
        self,
        model: str = DINO_MODEL,
        hidden: int = 256,
        local: bool = True,
        lr: float = 1e-4,
        seed: int = 0,
        dtype: str = "float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if lr <= 0 or hidden < 1:
            raise ValueError(f"discriminator: lr must be > 0 and hidden >= 1, got lr={lr}, hidden={hidden}")
        self.backbone = DinoBackbone(model, self.device, dtype)
        with torch.random.fork_rng(devices=[]):  # a seeded head that leaves the caller's RNG untouched
            torch.manual_seed(seed)
            self.global_head = head(self.backbone.dim, hidden).to(self.device)
            self.local_head = head(self.backbone.dim, hidden).to(self.device) if local else None
        self.optimizer = torch.optim.Adam(self.head_parameters(), lr=lr, betas=(0.0, 0.99))
        self.steps = 0

    def head_parameters(self) -> list[torch.nn.Parameter]:
        heads = [self.global_head] + ([self.local_head] if self.local_head is not None else [])
        return [p for module in heads for p in module.parameters()]

    def logits(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """DINO features (cls [B, D], patches [B, N, D]) -> D(x) [B]."""
        logits = self.global_head(cls).squeeze(-1)
        if self.local_head is not None:
            logits = (logits + self.local_head(patches).squeeze(-1).mean(-1)) / 2
        return logits

    def score(self, images, prompts):
        return self.logits(*self.backbone(images))

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One hinge-loss step on reference (`real`) and generated (`fake`) images [B, 3, H, W] in [0, 1]."""
        name = self.name or "discriminator"
        check_images(real, [""] * len(real), f"{name} (real images)")
        check_images(fake, [""] * len(fake), f"{name} (generated images)")
        with torch.no_grad():  # the backbone is frozen: only the heads learn
            real_features = self.backbone(real.detach().to(self.device, torch.float32))
            fake_features = self.backbone(fake.detach().to(self.device, torch.float32))
        with torch.enable_grad():
            real_logits, fake_logits = self.logits(*real_features), self.logits(*fake_features)
            loss = hinge_loss(real_logits, fake_logits)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        average_gradients(self.head_parameters())
        self.optimizer.step()
        self.steps += 1
        loss, real_logits, fake_logits = loss.detach(), real_logits.detach(), fake_logits.detach()
        accuracy = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
        return {
            "loss": float(loss),
            "real_logit": float(real_logits.mean()),
            "fake_logit": float(fake_logits.mean()),
            "accuracy": float(accuracy),
        }

    def state_dict(self) -> dict:
        """What training changes: head weights, optimiser state, steps (the frozen backbone is not saved)."""
        heads = {"global": self.global_head.state_dict()}
        if self.local_head is not None:
            heads["local"] = self.local_head.state_dict()
        return {"heads": heads, "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        heads = state["heads"]
        if ("local" in heads) != (self.local_head is not None):
            raise ValueError(
                f"discriminator state has heads {sorted(heads)}; this one has local={self.local_head is not None}"
            )
        self.global_head.load_state_dict(heads["global"])
        if self.local_head is not None:
            self.local_head.load_state_dict(heads["local"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])


register_reward(
    "discriminator",
    differentiable=True,
    weights=f"frozen DINOv2 (model={DINO_MODEL}, or timm:NAME) + a head trained during the run",
    description="Adv-GRPO adversarial reward: hinge-trained head on DINO features, updated each epoch",
)(Discriminator)
