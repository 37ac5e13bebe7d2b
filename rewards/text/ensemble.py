"""An ensemble of text rewards (typically reward models) combined into one score.

The same member spec and modes as the image `ensemble` (rewards/ensemble.py, after Coste et al.
2023, arXiv:2310.02743): `mean`, `worst` (WCO), `uncertainty` (UWO: mean - penalty_weight * spread),
computed by its `ensemble_values`; members are text rewards, member value = scale * reward + shift.
"""

from __future__ import annotations

import torch

from rewards.base import build_reward, register_reward
from rewards.ensemble import MEMBER_KEYS, ensemble_values
from rewards.text.base import TextReward


@register_reward(
    "text-ensemble",
    differentiable=False,
    weights="its members' (members=[{name, args, scale, shift}])",
    description="mean / worst-case / mean - λ·std of several text rewards (e.g. reward models)",
)
class TextRewardEnsemble(TextReward):
    def __init__(
        self,
        members: list[dict] | None = None,
        mode: str = "mean",
        penalty_weight: float = 1.0,
        penalty: str = "std",
        device: str = "cpu",
    ):
        super().__init__(device)
        if not members:
            raise ValueError(
                "text-ensemble needs members: a list of {name, args, scale, shift} (a text reward each)"
            )
        ensemble_values(torch.zeros(len(members), 1), mode, penalty_weight, penalty)  # checks the settings
        self.mode, self.penalty_weight, self.penalty = mode, penalty_weight, penalty
        self.members = torch.nn.ModuleList()
        self.affine: list[tuple[float, float]] = []
        for member in members:
            if not isinstance(member, dict) or "name" not in member or set(member) - MEMBER_KEYS:
                raise ValueError(f"text-ensemble member {member!r}: expected {{name, args, scale, shift}}")
            reward = build_reward(member["name"], **({"device": device} | member.get("args", {})))
            if not isinstance(reward, TextReward):
                raise ValueError(
                    f"text-ensemble member {member['name']!r} is an image reward, not a text reward"
                )
            self.members.append(reward)
            self.affine.append((float(member.get("scale", 1.0)), float(member.get("shift", 0.0))))

    def score(self, texts, prompts):
        rows = [
            scale * member(texts, prompts) + shift
            for member, (scale, shift) in zip(self.members, self.affine)
        ]
        return ensemble_values(torch.stack(rows), self.mode, self.penalty_weight, self.penalty)
