"""Reward shaping and reward-hacking controls applied before advantages are taken.

par_shape            PAR (Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking in RLHF"): the
                     reward centred on a reference reward and bounded by a sigmoid,
                     r' = sigmoid((r - r_ref) / tau). Past the reference the gain saturates, so a
                     proxy reward pushed far beyond what the reference earns stops paying.
unlikeliness_bonus   "Rewarding the Unlikely" (He et al. 2025): within a group, successful samples the
                     policy already finds likely earn less, r' = r (1 - beta (n - 1 - rank) / n), rank 0
                     the highest log-likelihood of the n successes; it keeps GRPO from sharpening onto
                     the one mode it already samples.
Constraints          Constrained RLHF (Moskovitz et al. 2024): a threshold per reward (at most: the
                     proxy point beyond which optimising it hurts; at least: a floor on a gold reward)
                     with a Lagrange multiplier each, updated by projected gradient ascent on the
                     violation after every batch; the optimised reward is the weighted sum minus each
                     multiplier times its constraint's slack.
pareto_front         Parrot (Lee et al. 2024): the non-dominated samples over several rewards;
pareto_rank_signal   and every sample's non-dominated-sorting rank in its group, as a reward.
dense_step_advantages, calibrate_noise
                     DenseGRPO (dense step-wise reward gains as advantages, and the per-step SDE noise
                     scaled until each step's gains are balanced).
batch_advantages, tracked_advantages
                     the advantage rules beside GRPO's group one (align.losses.group_advantages): one
                     mean and std over the batch, and DDPO's per-prompt running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def par_shape(rewards: torch.Tensor, reference: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """rewards, reference [B] -> sigmoid((rewards - reference) / temperature) [B] in (0, 1)."""
    if temperature <= 0:
        raise ValueError(f"PAR temperature must be > 0, got {temperature}")
    return torch.sigmoid((rewards.float() - reference.float()) / temperature)


def unlikeliness_bonus(
    rewards: torch.Tensor,
    log_likelihoods: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    success: float,
) -> torch.Tensor:
    """Scale down the rewards of likely successes. rewards, log_likelihoods, group_ids [B]; a success
    has reward >= `success`. In a group of n successes ranked by log-likelihood (0 = the likeliest),
    the reward of rank k is multiplied by 1 - beta (n - 1 - k) / n; failures are unchanged."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"unlikeliness beta must lie in [0, 1], got {beta}")
    shaped = rewards.float().clone()
    for group in torch.unique(group_ids):
        members = ((group_ids == group) & (rewards >= success)).nonzero().flatten()
        n = members.numel()
        if n < 2:
            continue
        order = members[log_likelihoods[members].argsort(descending=True)]  # likeliest first
        ranks = torch.arange(n, device=rewards.device, dtype=torch.float32)
        shaped[order] = shaped[order] * (1 - beta * (n - 1 - ranks) / n)
    return shaped


@dataclass
class Constraint:
    name: str  # a reward term
    at_most: float | None = None  # the proxy point: optimising past it is not rewarded
    at_least: float | None = None  # a floor the batch mean must keep

    def __post_init__(self):
        if (self.at_most is None) == (self.at_least is None):
            raise ValueError(f"constraint on {self.name}: give exactly one of at_most or at_least")

    def violation(self, mean: float) -> float:
        """> 0 when the batch mean breaks the constraint."""
        return mean - self.at_most if self.at_most is not None else self.at_least - mean

    def slack(self, values: torch.Tensor) -> torch.Tensor:
        """Per sample, how far it is on the wrong side (signed; the multiplier's term)."""
        return values - self.at_most if self.at_most is not None else self.at_least - values


class Constraints:
    """Lagrange multipliers for reward thresholds, updated once per batch (lambda >= 0).

    `ceilings` bounds the multipliers of at_most constraints by name. A cap on a reward the run also
    maximises with weight w is bounded by w: past its threshold the term's net weight w - lambda falls
    to 0, so optimising it stops; an unbounded multiplier passes w and then pushes the reward down
    (measured on the toy model: the multiplier reached 1.2 and held-out accuracy fell 0.18)."""

    def __init__(self, constraints: list[Constraint], lr: float = 0.5, ceilings: dict | None = None):
        if lr <= 0:
            raise ValueError(f"constraint multiplier lr must be > 0, got {lr}")
        self.constraints, self.lr = constraints, lr
        self.multipliers = {c.name: 0.0 for c in constraints}
        self.ceilings = {
            c.name: float(ceilings[c.name])
            for c in constraints
            if c.at_most is not None and c.name in (ceilings or {})
        }

    def shape(
        self, combined: torch.Tensor, values: dict[str, torch.Tensor], multipliers: dict | None = None
    ) -> torch.Tensor:
        """combined [B] (the weighted reward) minus sum_k lambda_k * slack_k [B] (lambda: the current
        multipliers, or those a batch was collected with)."""
        multipliers = self.multipliers if multipliers is None else multipliers
        missing = [c.name for c in self.constraints if c.name not in values]
        if missing:
            raise ValueError(f"constraint on {missing[0]!r}: no reward term of that name is scored")
        shaped = combined.float()
        for c in self.constraints:
            shaped = shaped - multipliers[c.name] * c.slack(values[c.name].float())
        return shaped

    def update(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Projected ascent on each multiplier by its constraint's violation; returns the multipliers."""
        for c in self.constraints:
            violation = c.violation(float(values[c.name].float().mean()))
            moved = max(0.0, self.multipliers[c.name] + self.lr * violation)
            self.multipliers[c.name] = min(moved, self.ceilings.get(c.name, moved))
        return dict(self.multipliers)

    def state_dict(self) -> dict:
        return {"multipliers": dict(self.multipliers)}

    def load_state_dict(self, state: dict) -> None:
        self.multipliers.update(state.get("multipliers", {}))


def pareto_ranks(values: torch.Tensor) -> torch.Tensor:
    """Non-dominated sorting (Parrot's batch-wise selection). values [B, K], higher is better in
    every column -> ranks [B]: 0 for the non-dominated front, 1 for the front once that is removed, ...
    Sample i dominates j when it is >= in every reward and > in one."""
    values = values.float()
    at_least = (values[:, None, :] >= values[None, :, :]).all(-1)
    better = (values[:, None, :] > values[None, :, :]).any(-1)
    dominates = at_least & better  # [i, j]: i dominates j
    ranks = torch.full((values.shape[0],), -1, dtype=torch.long, device=values.device)
    remaining = torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
    rank = 0
    while bool(remaining.any()):
        dominated = (dominates & remaining[:, None]).any(0)
        front = remaining & ~dominated
        ranks[front] = rank
        remaining &= ~front
        rank += 1
    return ranks


def pareto_ranks_within(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """values [B, K], group_ids [B] -> [B] ranks of pareto_ranks, each group sorted on its own."""
    ranks = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
    for group in group_ids.unique():
        members = (group_ids == group).nonzero().flatten()
        ranks[members] = pareto_ranks(values[members])
    return ranks


def pareto_front(values: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """values [B, K] -> [B] bool: non-dominated over the whole batch, or within each group."""
    ranks = pareto_ranks(values) if group_ids is None else pareto_ranks_within(values, group_ids)
    return ranks == 0


def pareto_rank_signal(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """values [B, K] -> [B]: minus each sample's non-dominated-sorting rank within its group (0 for the
    group's front, -1 for the next front, ...). As a GRPO signal every sample trains and no weights
    between the rewards are chosen: the front earns the most, and a sample beaten on every reward by
    another of its group earns less than that one."""
    return -pareto_ranks_within(values, group_ids).float()


def dense_step_advantages(
    step_rewards: torch.Tensor,
    group_ids: torch.Tensor,
    eps: float = 1e-4,
    std_over: str = "step",
    centre: bool = True,
    credit: str = "gain",
) -> torch.Tensor:
    """DenseGRPO's step-wise credit: step_rewards [B, S+1] are the rewards of the clean predictions
    before the first trained step and after each of the S steps (the last is the final image's); the
    gain of step s is step_rewards[:, s+1] - step_rewards[:, s]. With `centre` each group's mean gain at
    that step is removed (the paper's GRPO baseline; without it the reward estimated before the step is
    the only baseline). std_over "step" (the paper's) divides by the group's std of that step's gain
    (+ eps; 0 where a step has no spread in its group); "batch" by one std of every (centred) gain of
    the batch, so a step that moved few samples keeps small credit instead of being scaled up to unit
    spread. credit "gain" (the paper's) credits step s with its own gain; "to_go" with the gains of s
    and every later step, i.e. the final reward minus the estimate at x_s: the estimate is then a
    baseline (it depends on x_s only), so the credit stays unbiased when later steps are stochastic
    too and keeps the step's effect on what the later steps could reach. Returns [B, S]."""
    gains = step_gains(step_rewards)
    if credit == "to_go":
        gains = gains.flip(1).cumsum(1).flip(1)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    groups, steps = counts.shape[0], gains.shape[1]
    sums = torch.zeros(groups, steps, device=gains.device).index_add_(0, inverse, gains)
    centred = gains - (sums / counts[:, None])[inverse]
    credits = centred if centre else gains
    if std_over == "batch":
        spread = credits.std() if credits.numel() > 1 else credits.new_zeros(())
        return credits / (spread + eps) if spread > 0 else torch.zeros_like(credits)
    # the group's std of the step's credit (about its mean, whether or not the mean is removed)
    squares = torch.zeros(groups, steps, device=gains.device).index_add_(0, inverse, centred**2)
    stds = (squares / (counts[:, None] - 1).clamp(min=1)).sqrt()
    flat = (counts[:, None] == 1) | (stds == 0)  # one sample, or no spread at that step: no credit
    return torch.where(flat[inverse], torch.zeros_like(credits), credits / (stds[inverse] + eps))


def step_gains(step_rewards: torch.Tensor) -> torch.Tensor:
    """[B, S+1] rewards estimated before each window step and after the last -> [B, S] each step's gain."""
    return step_rewards[:, 1:].float() - step_rewards[:, :-1].float()


def calibrate_noise(
    scales: dict[int, float],
    step_rewards: torch.Tensor,
    steps: list[int],
    rate: float,
    band: float = 0.1,
    bounds: tuple[float, float] = (0.1, 3.0),
) -> tuple[dict[int, float], list[float | None]]:
    """DenseGRPO's reward-aware exploration, as we read it: a stochastic step's noise should leave its
    reward gains balanced (as many samples improved by the step's noise as worsened). step_rewards
    [B, S+1] as for dense_step_advantages, `steps` the S schedule indices they belong to. For each step,
    among samples whose gain is not zero: a share of losses above 0.5 + band means the noise mostly
    spoils images, so its scale shrinks by (1 - rate); below 0.5 - band, or no sample changed at all
    (the noise is too small for the reward to see), it grows by (1 + rate); in the band it stays.
    Scales stay within `bounds`. Returns the new {step: scale} and each step's share of losses
    (None where no gain is non-zero)."""
    gains = step_gains(step_rewards)
    updated, shares = dict(scales), []
    for column, step in enumerate(steps):
        moved = gains[:, column][gains[:, column].abs() > 1e-6]
        share = float((moved < 0).float().mean()) if len(moved) else None
        shares.append(share)
        if len(moved) and share > 0.5 + band:
            factor = 1.0 - rate
        elif not len(moved) or share < 0.5 - band:
            factor = 1.0 + rate
        else:
            factor = 1.0
        updated[step] = min(bounds[1], max(bounds[0], scales.get(step, 1.0) * factor))
    return updated, shares


def batch_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[B] rewards -> (r - mean) / (std + 1e-6) over the whole batch (no groups)."""
    rewards = rewards.float()
    return (rewards - rewards.mean()) / (rewards.std() + 1e-6)


def tracked_advantages(
    history: dict[str, list[float]], prompts: list[str], rewards: torch.Tensor, buffer: int, min_count: int
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """DDPO's per-prompt statistics (Black et al. 2023, sec. 4.3): each reward joins its prompt's last
    `buffer` rewards, and is normalised by their mean and std, or by the batch's while the prompt has
    fewer than `min_count`. Returns the advantages [B] and the new history (the old one is not changed)."""
    history = {prompt: list(values) for prompt, values in history.items()}
    for prompt, value in zip(prompts, rewards.tolist()):
        history[prompt] = (history.get(prompt, []) + [value])[-buffer:]
    out = torch.empty_like(rewards)
    for i, prompt in enumerate(prompts):
        seen = history[prompt]
        pool = torch.tensor(seen) if len(seen) >= min_count else rewards
        out[i] = (rewards[i] - pool.mean()) / (pool.std() + 1e-6)
    return out, history


def mean_group_std(values: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Mean over groups of the within-group std of `values`: the spread GRPO can learn from."""
    stds = [values[group_ids == g].std() for g in group_ids.unique() if int((group_ids == g).sum()) > 1]
    return float(torch.stack(stds).mean()) if stds else 0.0
