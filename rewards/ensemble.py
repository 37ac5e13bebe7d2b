"""Ensembles of reward models, against over-optimisation (Coste et al. 2023, "Reward Model Ensembles
Help Mitigate Overoptimization", arXiv:2310.02743). For member values R [K, B]:

    mean          R̄ = 1/K Σ_k R_k
    worst         min_k R_k                                   (worst-case optimisation, WCO)
    uncertainty   R̄ - λ std_k(R_k)                            (uncertainty-weighted, UWO)

The paper's UWO penalises the intra-ensemble variance; `penalty="var"` does that, `penalty="std"`
(the default here) keeps the penalty in the rewards' own units. Members should share a scale (the
paper ensembles one reward model trained from several seeds); give `scale`/`shift` per member
otherwise (member value = scale * reward + shift). `ensemble` is differentiable when every member is.
"""

from __future__ import annotations

import torch

from rewards.base import Reward, build_reward, register_reward

MODES = ("mean", "worst", "uncertainty")
MEMBER_KEYS = {"name", "args", "scale", "shift"}


def ensemble_values(
    values: torch.Tensor, mode: str = "mean", penalty_weight: float = 1.0, penalty: str = "std"
):
    """values [K, B] (one row per reward model) -> [B]."""
    if mode not in MODES:
        raise ValueError(f"ensemble mode must be one of {', '.join(MODES)}, got {mode!r}")
    if penalty not in ("std", "var"):
        raise ValueError(f"ensemble penalty must be 'std' or 'var', got {penalty!r}")
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"ensemble values must have shape [K >= 1, B], got {list(values.shape)}")
    if mode == "mean":
        return values.mean(0)
    if mode == "worst":
        return values.min(0).values
    spread = values.var(0, unbiased=False) if penalty == "var" else values.std(0, unbiased=False)
    return values.mean(0) - penalty_weight * spread


class RewardEnsemble(Reward):
    def __init__(
        self,
        members: list[dict] | None = None,
        mode: str = "mean",
        penalty_weight: float = 1.0,
        penalty: str = "std",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not members:
            raise ValueError("ensemble needs members: a list of {name, args, scale, shift} (a reward each)")
        ensemble_values(torch.zeros(len(members), 1), mode, penalty_weight, penalty)  # checks the settings
        self.mode, self.penalty_weight, self.penalty = mode, penalty_weight, penalty
        self.members = torch.nn.ModuleList()
        self.affine: list[tuple[float, float]] = []
        for member in members:
            if not isinstance(member, dict) or "name" not in member or set(member) - MEMBER_KEYS:
                raise ValueError(f"ensemble member {member!r}: expected {{name, args, scale, shift}}")
            self.affine.append((float(member.get("scale", 1.0)), float(member.get("shift", 0.0))))
            args = {"device": self.device} | member.get("args", {})
            self.members.append(build_reward(member["name"], **args))
        self.differentiable = all(m.differentiable for m in self.members)

    def score(self, images, prompts):
        rows = [
            scale * member(images, prompts) + shift
            for member, (scale, shift) in zip(self.members, self.affine)
        ]
        return ensemble_values(torch.stack(rows), self.mode, self.penalty_weight, self.penalty)


register_reward(
    "ensemble",
    differentiable=True,
    weights="its members' (members=[{name, args, scale, shift}])",
    description="mean / worst-case / mean - λ·std of several rewards (differentiable if all members are)",
)(RewardEnsemble)
