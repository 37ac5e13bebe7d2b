"""Losses and advantages: pure tensor functions, shared by the image and text modalities.

Shapes: B samples, T steps (denoising steps for images, tokens for text). A `mask [B, T]` marks the
steps that count (text padding, or SDE steps only); None means all count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    if mask is None:
        return values.mean() if dim is None else values.mean(dim)
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    scale: bool = True,
    std_over: str = "group",
    eps: float = 1e-4,
):
    """GRPO advantages: (r - mean of its group) / (std of its group + eps).

    rewards [B], group_ids [B] (samples of one prompt share an id). With `scale=False` only the
    mean is removed (Dr. GRPO); with `std_over="batch"` the divisor is the std of the whole batch
    (Flow-GRPO's GenEval recipe: a group with a small spread then moves the policy less than one whose
    outcomes really differ). Groups of one sample, or with no spread, get advantage 0. Returns
    (advantages [B], zero_std_fraction: the fraction of samples whose group had no reward spread).
    """
    if std_over not in ("group", "batch"):
        raise ValueError(f"std_over must be 'group' or 'batch', got {std_over!r}")
    rewards = rewards.float()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    groups = counts.shape[0]
    sums = torch.zeros(groups, device=rewards.device).index_add_(0, inverse, rewards)
    means = sums / counts
    centred = rewards - means[inverse]
    squares = torch.zeros(groups, device=rewards.device).index_add_(0, inverse, centred**2)
    stds = (squares / (counts - 1).clamp(min=1)).sqrt()  # unbiased, as torch.std
    flat = stds[inverse] < 1e-8
    divisor = stds[inverse] if std_over == "group" else rewards.std().expand_as(rewards)
    advantages = centred / (divisor + eps) if scale else centred
    advantages = torch.where((counts[inverse] > 1) & ~flat, advantages, torch.zeros_like(advantages))
    return advantages, float(flat.float().mean())


def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    mask: torch.Tensor | None = None,
    normalisation: str = "token",
    clip_range_high: float | None = None,
):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated for minimisation.

        ratio = exp(log_probs - old_log_probs)
        loss  = max(-A ratio, -A clip(ratio, 1 - eps_low, 1 + eps_high))

    log_probs, old_log_probs [B, T] (or [B]); advantages [B] broadcast over T. `normalisation`
    averages over every counted step of the batch ("token") or per sequence first ("sequence").
    Returns (loss, stats) with the clip fraction and the importance-ratio statistics.
    """
    if log_probs.ndim == 1:
        log_probs, old_log_probs = log_probs[:, None], old_log_probs[:, None]
        mask = None if mask is None else mask[:, None]
    high = clip_range if clip_range_high is None else clip_range_high
    ratio = torch.exp(log_probs - old_log_probs)
    advantages = advantages.view(-1, 1).to(ratio.dtype)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + high)
    per_step = torch.maximum(unclipped, clipped)
    if normalisation == "token":
        loss = masked_mean(per_step, mask)
    elif normalisation == "sequence":
        loss = masked_mean(per_step, mask, dim=1).mean()
    else:
        raise ValueError(f"unknown normalisation {normalisation!r}; use 'token' or 'sequence'")
    with torch.no_grad():  # 0-d tensors: the loop reads an epoch's statistics at once, not each step's
        counted = torch.ones_like(ratio, dtype=torch.bool) if mask is None else mask.bool()
        some = counted.any()  # no boolean indexing either: its size would be read from the device
        stats = {
            "clip_fraction": masked_mean(((ratio - 1).abs() > clip_range).float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_min": torch.where(some, torch.where(counted, ratio, torch.inf).min(), 1.0),
            "ratio_max": torch.where(some, torch.where(counted, ratio, -torch.inf).max(), 1.0),
            "approx_kl": masked_mean(0.5 * (log_probs - old_log_probs) ** 2, mask),
        }
    return loss, stats


def gaussian_mean_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2 I) || N(reference_mean, std^2 I)) per sample, averaged over dimensions.

    Equal variances make the KL ||mean - reference_mean||^2 / (2 std^2) (Flow-GRPO's KL to the
    reference on the SDE mean). mean, reference_mean [B, ...]; std [B]. Returns [B]; 0 where std=0.
    """
    squared = ((mean - reference_mean) ** 2).flatten(1).mean(1)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, squared / (2 * safe**2), torch.zeros_like(squared))


def k3_kl(log_probs: torch.Tensor, reference_log_probs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per step: exp(d) - d - 1, d = ref - policy.

    Unbiased, always >= 0; the KL term of text GRPO (DeepSeekMath). Shapes [B, T] -> [B, T].
    """
    delta = reference_log_probs - log_probs
    return torch.exp(delta) - delta - 1


def dpo_loss(
    chosen_log_ratio: torch.Tensor,
    rejected_log_ratio: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
):
    """DPO (Rafailov et al. 2023, eq. 7) on implicit rewards.

    chosen_log_ratio [B]   = log pi(y_w | x) - log pi_ref(y_w | x)
    rejected_log_ratio [B] = log pi(y_l | x) - log pi_ref(y_l | x)
    loss = -log sigmoid(beta (chosen - rejected)), with conservative label smoothing eps:
    (1 - eps) * that + eps * (-log sigmoid(-beta (chosen - rejected))).
    At the start (policy = reference) both ratios are 0 and the loss is log 2.
    Returns (loss, stats: reward margin, accuracy, implicit rewards).
    """
    logits = beta * (chosen_log_ratio - rejected_log_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    with torch.no_grad():
        stats = {
            "reward_chosen": float((beta * chosen_log_ratio).mean()),
            "reward_rejected": float((beta * rejected_log_ratio).mean()),
            "reward_margin": float((beta * (chosen_log_ratio - rejected_log_ratio)).mean()),
            "reward_accuracy": float((logits > 0).float().mean()),
        }
    return losses.mean(), stats


def simpo_loss(chosen_log_probs: torch.Tensor, rejected_log_probs: torch.Tensor, beta: float, gamma: float):
    """SimPO (Meng et al. 2024, eq. 6): length-normalised log-likelihoods, target margin gamma.

    chosen_log_probs, rejected_log_probs [B]: mean per-token log-probs (no reference model).
    loss = -log sigmoid(beta * chosen - beta * rejected - gamma)
    """
    logits = beta * (chosen_log_probs - rejected_log_probs) - gamma
    with torch.no_grad():
        stats = {
            "reward_margin": float((beta * (chosen_log_probs - rejected_log_probs)).mean()),
            "reward_accuracy": float((logits > 0).float().mean()),
        }
    return -F.logsigmoid(logits).mean(), stats


LOG_2 = math.log(2.0)


def _per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B]: the mean over every non-batch dimension."""
    return values.flatten(1).mean(1)


def matching_error(prediction: torch.Tensor, target: torch.Tensor, adaptive: bool = False) -> torch.Tensor:
    """Per-sample flow-matching error [B]: mean((prediction - target)^2); with `adaptive`, divided by
    the sample's own (detached) mean absolute error, DiffusionNFT's adaptive weight, which makes
    every sample's loss about its mean absolute error whatever the noise level."""
    difference = prediction.float() - target.float()
    error = _per_sample_mean(difference**2)
    if adaptive:
        error = error / _per_sample_mean(difference.detach().abs()).clamp(min=1e-5)
    return error


def nft_loss(
    prediction: torch.Tensor,
    old_prediction: torch.Tensor,
    target: torch.Tensor,
    optimality: torch.Tensor,
    beta: float,
    to_clean=None,
    adaptive: bool = True,
):
    """DiffusionNFT (Zheng et al. 2025, eq. 8): flow matching of two implicit policies built around
    the sampling (old) policy's prediction,

        v+ = (1 - beta) v_old + beta v_theta     (positive: trained towards the sample)
        v- = (1 + beta) v_old - beta v_theta     (negative: the reflection of v+ about v_old)
        loss = mean_i [ r_i e(v+_i) + (1 - r_i) e(v-_i) ] / beta

    on a sample's clean latent noised by the forward process; r [B] in [0, 1] is the sample's
    optimality (1: best of its group, 0: worst). A good sample pulls v_theta towards its target, a bad
    one pushes it away from it, with v_old the fixed point between. e() is `matching_error` of the
    target, measured on clean-latent estimates when `to_clean` maps a prediction to one (the paper's
    x0 space, with its adaptive weight). At beta = 1 and r = 1 this is plain flow matching; as
    beta -> 0 with v_theta = v_old its gradient is (2r - 1) times flow matching's.
    prediction, old_prediction, target [B, ...] (old_prediction detached here); optimality [B].
    Returns (loss, stats)."""
    old = old_prediction.detach().float()
    positive = (1 - beta) * old + beta * prediction.float()
    negative = (1 + beta) * old - beta * prediction.float()
    if to_clean is not None:
        positive, negative, target = to_clean(positive), to_clean(negative), to_clean(target)
    positive_error = matching_error(positive, target, adaptive)
    negative_error = matching_error(negative, target, adaptive)
    r = optimality.float().to(positive_error.device)
    loss = (r * positive_error + (1 - r) * negative_error).mean() / beta
    stats = {
        "positive_error": float(positive_error.detach().mean()),
        "negative_error": float(negative_error.detach().mean()),
        "old_distance": float(_per_sample_mean((prediction.detach().float() - old) ** 2).mean()),
    }
    return loss, stats


def awm_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor | None = None,
    old_errors: torch.Tensor | None = None,
    clip_range: float | None = None,
):
    """Advantage Weighted Matching (Xue et al. 2025): the pretraining flow-matching error of each of
    the policy's own samples, weighted by its advantage: mean_i A_i w_i e_i, e_i = mean((v_theta -
    target)^2) (w: a per-sample time weight, default 1). -e_i stands in for the sample's log-likelihood;
    given the errors of the policy that sampled (`old_errors`) and a `clip_range`, the ratio
    exp(e_old - e) is clipped as PPO clips it (the pessimistic of the two terms), which bounds how far
    later optimiser steps on the same samples move. With every advantage 1 and no clip this is plain
    (weighted) flow matching. Returns (loss, stats)."""
    errors = matching_error(prediction, target)
    advantages = advantages.float().to(errors.device)
    weights = torch.ones_like(errors) if weights is None else weights.float().to(errors.device)
    log_likelihood = -weights * errors
    stats = {"matching_error": float(errors.detach().mean())}
    if old_errors is None or clip_range is None:
        return -(advantages * log_likelihood).mean(), stats
    old = -weights * old_errors.float().to(errors.device)
    ratio = torch.exp(log_likelihood - old)
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(-advantages * ratio, -advantages * clipped).mean()
    stats.update(
        {
            "ratio_mean": float(ratio.detach().mean()),
            "clip_fraction": float(((ratio - 1).abs() > clip_range).float().mean()),
        }
    )
    return loss, stats


def ratio_norm_shift(log_ratio: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's ratio normalisation, centring part (Wang et al. 2025): the mean log importance
    ratio of the samples trained at the same denoising step [B] (detached), to subtract from each
    log-ratio. A Gaussian step's log-ratio has mean -||mu_theta - mu_old||^2 / (2 std^2) under the
    sampling policy, below 0 and largest at the low-noise steps, so uncentred ratios sit below 1 and
    PPO's clip acts on one side only. log_ratio, step_ids [B]."""
    log_ratio = log_ratio.detach()
    _, inverse, counts = torch.unique(step_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.shape[0], dtype=log_ratio.dtype, device=log_ratio.device)
    sums.index_add_(0, inverse.to(log_ratio.device), log_ratio)
    return (sums / counts.to(log_ratio.device))[inverse.to(log_ratio.device)]


def step_gradient_weights(std: torch.Tensor, coefficient: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's per-step gradient reweighting: a Gaussian step whose mean moves by `coefficient` x
    the model output and whose noise is `std` has a log-prob gradient in the output of size
    |coefficient| / std per unit of noise, growing without bound as the noise vanishes, so the late
    steps dominate the update. Weighting each step's loss by std / |coefficient| evens them out; the
    weights are scaled to mean 1 over the `live` (stochastic) steps. std, coefficient, live [T]."""
    raw = torch.where(live, std / coefficient.abs().clamp(min=1e-12), torch.zeros_like(std))
    return raw / raw[live].mean()


def dgpo_loss(
    errors: torch.Tensor,
    reference_errors: torch.Tensor,
    advantages: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
):
    """DGPO (Luo et al. 2025): a group-level DPO on the diffusion ELBO. With the implicit reward of a
    sample -(e - e_ref) (its flow-matching error against the reference's, as Diffusion-DPO reads it),
    each group's samples are pulled apart by their advantages,

        z_g  = beta / |g| sum_{i in g} A_i (e_i - e_ref_i)
        loss = mean_g -log sigmoid(-z_g)

    which with centred advantages is a Bradley-Terry preference of the group's better half over its
    worse half. At the start (e = e_ref) the loss is log 2 and its gradient beta / (2 |g|) A_i de_i, AWM's
    direction; it saturates as a group's preference is met, where AWM keeps pushing. errors,
    reference_errors (detached here), advantages, group_ids [B]. Returns (loss, stats)."""
    advantages = advantages.float().to(errors.device)
    terms = advantages * (errors - reference_errors.detach().float())
    _, inverse, counts = torch.unique(group_ids.to(errors.device), return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.shape[0], dtype=terms.dtype, device=terms.device).index_add(0, inverse, terms)
    z = beta * sums / counts
    loss = -F.logsigmoid(-z).mean()
    stats = {"group_margin": float(-z.detach().mean()), "group_accuracy": float((z < 0).float().mean())}
    return loss, stats
