"""Combining rewards: per-reward normalisation, weighted sums, preference win-rates, and `RewardSet`,
the object the training loop holds.

Pure functions first (each unit-tested on hand-made tensors):

    weighted_sum(values, weights)        {name: [B]}, {name: w} -> Σ w_name values_name   [B]
    group_normalise(values, group_ids)   (v - mean of its group) / (std of its group + eps)
    group_win_rate(values, group_ids)    Pref-GRPO's signal from any scalar reward
    preference_win_rate(prefer, ...)     Pref-GRPO's signal from a pairwise preference model

Pref-GRPO (Wang et al. 2025, "Pref-GRPO: Pairwise Preference Reward-based GRPO for Stable
Text-to-Image Reinforcement Learning", arXiv:2508.20751) replaces a sample's score by its win rate
against the other samples of its group, w_i = 1/(G-1) Σ_{j≠i} P(i ≻ j), which is bounded and does
not amplify tiny score differences into large normalised advantages (their "illusory advantage").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from rewards.base import REWARDS, NonFiniteReward, Reward, build_reward

NORMALISATIONS = ("none", "group", "running")


def check_weights(names: Iterable[str], weights: dict[str, float]) -> None:
    """Raise a ValueError unless `weights` has exactly `names` as keys, each weight finite."""
    names = list(names)
    missing = [n for n in names if n not in weights]
    extra = [n for n in weights if n not in names]
    if missing or extra:
        raise ValueError(
            f"reward weights do not match the rewards: no weight for {missing}, weights for unknown {extra}"
        )
    bad = {n: w for n, w in weights.items() if not isinstance(w, (int, float)) or not math.isfinite(w)}
    if bad:
        raise ValueError(f"reward weights must be finite numbers, got {bad}")


def weighted_sum(values: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ_name weights[name] * values[name]  -> [B]; the names must match exactly."""
    check_weights(values, weights)
    return sum(weights[name] * values[name].float() for name in values)


def _group_index(group_ids: torch.Tensor | None, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse [B]: each sample's group 0..G-1, counts [G]); no ids means one group."""
    if group_ids is None:
        return torch.zeros(size, dtype=torch.long, device=device), torch.tensor([size], device=device)
    if group_ids.shape != (size,):
        raise ValueError(f"group_ids must have shape [{size}], got {list(group_ids.shape)}")
    _, inverse, counts = torch.unique(group_ids.to(device), return_inverse=True, return_counts=True)
    return inverse, counts


def group_normalise(
    values: torch.Tensor, group_ids: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """(v - mean of its group) / (std of its group + eps), std unbiased as torch.std. Groups of one
    sample give 0. Differentiable in `values` (means and stds included)."""
    values = values.float()
    inverse, counts = _group_index(group_ids, values.shape[0], values.device)
    sums = torch.zeros(len(counts), device=values.device).index_add(0, inverse, values)
    centred = values - (sums / counts)[inverse]
    squares = torch.zeros(len(counts), device=values.device).index_add(0, inverse, centred**2)
    stds = (squares / (counts - 1).clamp(min=1)).sqrt()
    return centred / (stds[inverse] + eps)


class RunningNormaliser:
    """Running mean and variance of a stream of values (Chan et al. 1979's pairwise update), for
    `normalise="running"`: each batch is first added to the statistics (RewardSet.observe), then
    standardised by them (RewardSet.combine)."""

    def __init__(self, eps: float = 1e-6):
        self.count, self.mean, self.m2, self.eps = 0, 0.0, 0.0, eps

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().flatten()
        values = values[values.isfinite()]  # a NaN would stay in the statistics for good
        n = values.numel()
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        return (values.float() - self.mean) / (self.std + self.eps)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def pairwise_preferences(values: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """[B] -> P [B, B], P[i, j] = P(i preferred to j): 1 / 0.5 / 0 by comparison when temperature
    is 0, else Bradley-Terry sigmoid((v_i - v_j) / temperature)."""
    difference = values.float()[:, None] - values.float()[None, :]
    if temperature > 0:
        return torch.sigmoid(difference / temperature)
    return (difference > 0).float() + 0.5 * (difference == 0).float()


def win_rate_from_preferences(
    preferences: torch.Tensor, group_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """P [B, B] -> [B]: mean of P[i, j] over the other members j of i's group (0.5 alone)."""
    size = preferences.shape[0]
    inverse, counts = _group_index(group_ids, size, preferences.device)
    same = (inverse[:, None] == inverse[None, :]) & ~torch.eye(
        size, dtype=torch.bool, device=preferences.device
    )
    others = (counts[inverse] - 1).float()
    wins = (preferences * same).sum(1)
    return torch.where(others > 0, wins / others.clamp(min=1), torch.full_like(wins, 0.5))


def group_win_rate(values: torch.Tensor, group_ids: torch.Tensor | None = None, temperature: float = 0.0):
    """Each sample's win rate in its group under a scalar reward [B] -> [B] in [0, 1] (ties: half)."""
    return win_rate_from_preferences(pairwise_preferences(values, temperature), group_ids)


def preference_win_rate(
    prefer: Callable[[torch.Tensor, torch.Tensor, list[str]], torch.Tensor],
    images: torch.Tensor,
    prompts: Sequence[str],
    group_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Win rates from a pairwise preference model `prefer(images_a, images_b, prompts) -> P(a ≻ b) [N]`,
    asked once per unordered pair within each group (P(b ≻ a) = 1 - P(a ≻ b))."""
    size = images.shape[0]
    inverse, _ = _group_index(group_ids, size, images.device)
    first, second = torch.triu_indices(size, size, offset=1, device=images.device)
    keep = inverse[first] == inverse[second]
    first, second = first[keep], second[keep]
    preferences = torch.full((size, size), 0.5, device=images.device)
    if len(first):
        probability = prefer(images[first], images[second], [prompts[i] for i in first.tolist()]).float()
        if probability.shape != (len(first),) or not bool(((probability >= 0) & (probability <= 1)).all()):
            raise ValueError(f"preference model must return probabilities of shape [{len(first)}] in [0, 1]")
        preferences[first, second] = probability
        preferences[second, first] = 1 - probability
    return win_rate_from_preferences(preferences, group_ids)


def _check_terms(terms, normalise: str) -> list[tuple[str, float, dict]]:
    """Validate every term before any reward loads its weights."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    if not terms:
        raise ValueError("RewardSet needs at least one (name, weight, args) term")
    checked = []
    for term in terms:
        if len(term) != 3 or not isinstance(term[2], dict):
            raise ValueError(f"each reward term is (name, weight, args dict), got {term!r}")
        name, weight, args = term
        REWARDS.lookup(name.split("@")[0])  # unknown names fail here, with a suggestion (NAME@URL: remote)
        checked.append((name, weight, args))
    names = [name for name, _, _ in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"reward {duplicates[0]!r} is listed twice; give each reward once")
    check_weights(names, {name: weight for name, weight, _ in checked})
    return checked


def _build(name: str, args: dict, device: str, remote_timeout: float) -> Reward:
    """The term's reward; with `remote: URL` in its args, a client of the server that scores it there
    (rewards/remote.py), under the term's own name."""
    if name == "remote" or "@" in name:  # the remote reward, or NAME@URL
        return build_reward(name, **({"timeout": remote_timeout} | args))
    if "remote" not in args:
        return build_reward(name, **({"device": device} | args))
    client = {"timeout": remote_timeout} | {key: value for key, value in args.items() if key != "remote"}
    reward = build_reward("remote", url=args["remote"], rewards=[name], **client)
    reward.name = name
    return reward


class RewardSet:
    """Several rewards, their weights and their normalisation: what an algorithm optimises.

    terms      [(name, weight, args)]; args go to the reward's factory (`align rewards list`), or with
               `remote: URL` the term is scored by that reward server (its own args are the server's)
    normalise  "none": raw values; "group": standardised within each prompt group (or the whole batch
               when no group ids are given); "running": standardised by running statistics
    """

    def __init__(self, terms, normalise: str = "none", device: str = "cpu", remote_timeout: float = 120.0):
        checked = _check_terms(terms, normalise)
        self.names = [name for name, _, _ in checked]
        self.weights = {name: float(weight) for name, weight, _ in checked}
        self.normalise = normalise
        self.rewards: dict[str, Reward] = {
            name: _build(name, args, device, remote_timeout) for name, _, args in checked
        }
        self.normalisers = {name: RunningNormaliser() for name in self.names}

    @property
    def differentiable(self) -> bool:
        return all(reward.differentiable for reward in self.rewards.values())

    @property
    def trainable(self) -> dict[str, Reward]:
        return {name: r for name, r in self.rewards.items() if callable(getattr(r, "update", None))}

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Raw values {name: [B]}; differentiable rewards keep the graph when gradients are enabled. A
        reward's NaN or inf is passed on, not raised: the training loop skips that step and counts it."""
        values = {}
        for name, reward in self.rewards.items():
            try:
                values[name] = reward(images, prompts)
            except NonFiniteReward as error:
                values[name] = error.values
        return values

    def observe(self, values: dict[str, torch.Tensor]) -> None:
        """Add a collected batch to the running statistics (`normalise="running"`; nothing otherwise).
        Call it once per batch, before `combine`, which only reads the statistics."""
        self._check_names(values)
        if self.normalise == "running":
            for name, v in values.items():
                self.normalisers[name].update(v)

    def combine(self, values: dict[str, torch.Tensor], group_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise each reward (per `normalise`), then the weighted sum -> [B]. No side effects."""
        self._check_names(values)
        if self.normalise == "group":
            values = {name: group_normalise(v, group_ids) for name, v in values.items()}
        elif self.normalise == "running":
            values = {name: self.normalisers[name].normalise(v) for name, v in values.items()}
        return weighted_sum(values, self.weights)

    def _check_names(self, values: dict) -> None:
        if sorted(values) != sorted(self.names):
            raise ValueError(f"values for rewards {sorted(values)}, but this RewardSet has {self.names}")

    def state_dict(self) -> dict:
        """Running statistics and trainable rewards' state (tensors and Python scalars only)."""
        return {
            "normalisers": {name: n.state_dict() for name, n in self.normalisers.items()},
            "trainable": {name: reward.state_dict() for name, reward in self.trainable.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if sorted(state["normalisers"]) != sorted(self.names) or sorted(state["trainable"]) != sorted(
            self.trainable
        ):
            raise ValueError(
                f"reward state is for rewards {sorted(state['normalisers'])} (trainable"
                f" {sorted(state['trainable'])}), but this set has {sorted(self.names)}"
                f" (trainable {sorted(self.trainable)})"
            )
        for name, normaliser_state in state["normalisers"].items():
            self.normalisers[name].load_state_dict(normaliser_state)
        for name, reward_state in state["trainable"].items():
            self.trainable[name].load_state_dict(reward_state)
