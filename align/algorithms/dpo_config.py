"""The settings of the DPO family on images (dpo.py: Diffusion-DPO, Flow-DPO, online DPO), data only:
this module imports nothing but the schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from align.algorithms.forward_process_config import time_range_problems
from align.schema import param


@dataclass
class DPOConfig:
    name: str
    beta: float = param(5000.0, gt=0.0)  # Diffusion-DPO's beta (per-dimension errors): drift vs preference
    label_smoothing: float = param(0.0, min=0.0, max=0.5)
    pairs: str | None = None  # JSONL path, or "pickapic:<name or dir>[:split]"
    image_root: str | None = None  # where relative image paths start (default: the JSONL's folder)
    max_pairs: int | None = param(None, min=1)
    reward_margin: float = param(0.0, min=0.0)  # online: skip pairs whose rewards differ less
    # the chosen images' own denoising loss beside DPO's (RPO, Pang et al. 2024: DPO + NLL of the
    # winner): sft_weight * beta / 4 * (e(x_w) - e_ref(x_w)). At 1 it pulls the chosen error down as
    # hard as DPO's first step pushes it; it stops the margin being won by raising both errors
    sft_weight: float = param(0.0, min=0.0)
    # where on the training noise schedule the pairs are noised, [lo, hi] with 0 clean and 1 pure noise
    # (flow models: sigma; UNets: the fraction of the timesteps). Layout (count, position) is settled
    # at high noise, as Flow-GRPO's SDE window on the first steps uses; [0, 1] is Diffusion-DPO's choice
    time_range: list[float] = field(default_factory=lambda: [0.0, 1.0])

    def check(self):
        yield from time_range_problems(self.time_range)


@dataclass
class DiffusionDPOConfig(DPOConfig):
    name: str = "diffusion-dpo"


@dataclass
class FlowDPOConfig(DPOConfig):
    name: str = "flow-dpo"


@dataclass
class OnlineDPOConfig(DPOConfig):
    name: str = "online-dpo"
    # ten times below offline's: the policy's own pairs separate fast, and at 2000 the implicit margins
    # reach 4-8 within 10 epochs, so the sigmoid hands all the gradient to the few pairs it ranks worst
    # (toy model, 80 epochs: +0.105 at 200; at 2000 +0.052 at 40 falling to +0.028 at 120)
    beta: float = param(200.0, gt=0.0)
    # train each epoch on the pairs of the last `replay_epochs` epochs (1: only the new ones), so every
    # pair is seen several times at different noise levels, as an offline pairs file is
    replay_epochs: int = param(1, min=1)
    # whose samples the pairs are drawn from: the current policy (online), or the reference, i.e. the
    # LoRA off (an endless offline pairs file: the diagnostic that separates on-policy pairs from the rest)
    sample_from: str = param("policy", choices=("policy", "reference"))
    # which pairs of a prompt's group train: its best against its worst, or every pair whose rewards
    # differ by more than reward_margin (up to g(g-1)/2 per group from the same samples)
    pairing: str = param("best-worst", choices=("best-worst", "all"))
