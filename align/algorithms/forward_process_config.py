"""The settings of the forward-process methods (forward_process.py: DiffusionNFT, AWM, DGPO) and of
the DPO family (dpo.py), data only: this module imports nothing but the schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from align.schema import param


def time_range_problems(time_range: list[float]):
    """The config rule of a `time_range` field: [lo, hi] on the training noise schedule."""
    if len(time_range) != 2 or not 0.0 <= time_range[0] < time_range[1] <= 1.0:
        yield ["time_range"], "must be [lo, hi] with 0 <= lo < hi <= 1"


@dataclass
class ForwardProcessConfig:
    name: str
    draws: int = param(2, min=1)  # forward-process noisings of every sample per pass (each a unit)
    # where on the training noise schedule the samples are noised, [lo, hi] with 0 clean and 1 pure
    # noise (flow models: sigma, logit-normal inside); layout is decided at high noise
    time_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    advantage_clip: float = param(5.0, gt=0.0)  # |advantage| cap (NFT: the advantage that maps to r = 0 or 1)
    advantage_std: str = param("group", choices=("group", "batch"))  # the divisor of group advantages
    kl_coef: float = param(0.0, min=0.0)  # weight of mean((v - v_ref)^2), the LoRA-off reference

    def check(self):
        yield from time_range_problems(self.time_range)


@dataclass
class DiffusionNFTConfig(ForwardProcessConfig):
    name: str = "diffusion-nft"
    beta: float = param(1.0, gt=0.0)  # strength of the implicit policies around the old one
    adaptive_weight: bool = True  # errors in clean-latent space over their own mean |error| (the paper's)
    old_decay_rate: float = param(0.001, min=0.0)  # the old policy's EMA decay grows this much per epoch
    old_decay_max: float = param(0.5, min=0.0, max=0.999)


@dataclass
class AWMConfig(ForwardProcessConfig):
    name: str = "awm"
    kl_coef: float = param(1.0, min=0.0)
    # a time weight on each sample's error: uniform, or sigma (the high-noise draws count more)
    weighting: str = param("uniform", choices=("uniform", "sigma"))
    clip_range: float | None = param(None, gt=0.0)  # PPO clip on exp(e_old - e); None: no ratio


@dataclass
class DGPOConfig(ForwardProcessConfig):
    name: str = "dgpo"
    beta: float = param(100.0, gt=0.0)  # DPO's beta on per-dimension matching errors (DGPO's default)
    # one noise and one time per group and draw, so that the error differences inside a group are the
    # samples', not the noises' (DGPO's shared noise)
    shared_noise: bool = True


