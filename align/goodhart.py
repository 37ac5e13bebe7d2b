"""Over-optimisation curves (Gao et al. 2023): gold and proxy rewards against the distance from the base.

path_kl        the KL from the base of the policy's whole SDE path on evaluation prompts: every step of
               a rollout of `num_steps` at `noise_level`, re-scored by the policy and by the reference
               (the LoRA off); with equal step variances a step's KL is ||mean - mean_ref||^2 / (2 std^2)
               summed over the latent's dimensions, and the path's is the sum over steps (chain rule).
               Gao et al. plot against sqrt(KL); so does `curves`.
curves         a run's evaluations (gallery.plots.read_evaluations: the base first) as rows of epoch,
               gold (all-met accuracy and partial-credit score) with SEs, the paired change of one of
               them from the best evaluation before, each reward, the KL and its square root.
goodhart       a run's over-optimisation read off its curve: the proxy's rise, the gold peak and the
               drop after it (paired SE over the same prompts and seeds), the epoch of the first fall
               of 0.02 below the peak, and the first epoch a monitor flagged.
best_of_n_curve  the inference-time curve: the gold (accuracy and score) of the proxy's best of n
               samples, at the best-of-n KL log n - (n - 1) / n.

A run's evaluations are read, and drawn against sqrt(KL), by gallery/plots.py (`align gallery` with the
run, and `align curves`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from align.losses import gaussian_mean_kl
from align.optimize import candidate_seeds
from rewards.scoring import standard_error
from samplers.noise import generators_from_seeds


@torch.no_grad()
def path_kl(adapter, policy, prompts: list[str], seeds: int, num_steps: int, noise_level: float, batch: int = 64):
    """(mean, SE) over prompts x seeds of KL(policy path || reference path) in nats."""
    flat = [(p, s) for p in prompts for s in range(seeds)]
    totals = []
    for start in range(0, len(flat), batch):
        chunk = flat[start : start + batch]
        trajectory = adapter.sample(
            [p for p, _ in chunk],
            generators_from_seeds([s for _, s in chunk]),
            num_steps=num_steps,
            noise_levels=noise_level,
        )
        dims = trajectory.latents[0, 0].numel()
        total = torch.zeros(len(chunk))
        for step in range(num_steps):
            out = adapter.rescore(trajectory, step)
            with policy.reference():
                reference = adapter.rescore(trajectory, step)
            total += (gaussian_mean_kl(out.mean, reference.mean, out.std) * dims).float().cpu()
        totals += total.tolist()
    return float(np.mean(totals)), standard_error(totals)


GOLD = {"accuracy": "outcomes", "score": "scores"}  # a gold measure -> its per-image values


def curves(rows: list[dict], gold: str = "accuracy") -> list[dict]:
    """Each evaluation with the paired change of the gold measure (all-met `accuracy`, or the partial
    credit `score`) from the best evaluation before it (difference, SE over the same prompts x seeds)
    and sqrt(KL)."""
    per_image = GOLD[gold]
    out, best = [], None
    for row in rows:
        entry = {k: row.get(k) for k in ("epoch", "accuracy", "accuracy_se", "score", "score_se", "rewards", "kl", "kl_se")}
        entry["sqrt_kl"] = math.sqrt(row["kl"]) if row.get("kl") is not None else None
        if best is not None and row.get(per_image) and best.get(per_image):
            change = np.asarray(row[per_image], float) - np.asarray(best[per_image], float)
            entry["from_peak"], entry["from_peak_se"] = float(change.mean()), standard_error(change)
        if best is None or row[gold] > best[gold]:
            best = row
        out.append(entry)
    return out


def goodhart(
    rows: list[dict], proxy: str, gold: str = "accuracy", fall: float = 0.02, flagged_epochs: list[int] | None = None
) -> dict:
    """The claims of an over-optimisation run, read off its evaluations (see the module's doc): the
    proxy's first, last and highest value; the gold measure's base, peak, final value and the paired
    change from peak to final; the first epoch after the peak that is `fall` below it; the first
    epoch a monitor flagged (of `flagged_epochs`, every epoch's, where given: flags rise between
    evaluations too; else of the evaluated epochs)."""
    per_image = GOLD[gold]
    peak = max(range(len(rows)), key=lambda i: rows[i][gold])
    final = rows[-1]
    if final.get(per_image) and rows[peak].get(per_image):
        change = np.asarray(final[per_image], float) - np.asarray(rows[peak][per_image], float)
    else:  # evaluations recorded without per-image values: no paired change
        change = np.full(1, float(final[gold] - rows[peak][gold]))
    fallen = next((r["epoch"] for r in rows[peak + 1 :] if r[gold] <= rows[peak][gold] - fall), None)
    if flagged_epochs is None:
        flagged_epochs = [r["epoch"] for r in rows if r.get("monitor_flags")]
    flagged = min(flagged_epochs, default=None)
    values = [r["rewards"].get(proxy) for r in rows]
    return {
        "gold": gold,
        "proxy_first": values[0],
        "proxy_last": values[-1],
        "proxy_max": max(values),
        "gold_base": rows[0][gold],
        "gold_peak": rows[peak][gold],
        "peak_epoch": rows[peak]["epoch"],
        "gold_final": final[gold],
        "final_from_peak": float(change.mean()),
        "final_from_peak_se": standard_error(change),
        "first_fall_epoch": fallen,
        "first_flag_epoch": flagged,
    }


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n (Stiennon et al. 2020; Gao et al. 2023's x-axis)."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def best_of_n_curve(adapter, prompts: list[str], seeds: int, proxy, ns: list[int], batch: int = 64) -> list[dict]:
    """The inference-time curve: for each prompt x seed, candidates k = 0..max(ns)-1 (best-of-N's
    candidate seeds, align.optimize.candidate_seeds; the ODE sampler), the one the proxy scores highest among the first n is kept;
    per n, the kept images' gold values (the toy verifier: all-met accuracy and partial-credit score,
    each with its SE) and the proxy's mean, at KL log n - (n-1)/n. Toy prompts only."""
    from rewards.scoring import score_images

    flat = [(p, s) for p in prompts for s in range(seeds)]
    names = [p for p, _ in flat]
    proxies, outcomes = [], []
    for k in range(max(ns)):
        images = adapter.generate(names, candidate_seeds([s for _, s in flat], k), batch_size=batch)
        proxies.append(proxy(images, names).float().cpu())
        checks = score_images(images, names)["checks"]
        outcomes.append(torch.tensor([[float(c["all"]), float(c["score"])] for c in checks]))
        del images
    proxies, outcomes = torch.stack(proxies), torch.stack(outcomes)  # [K, B], [K, B, 2]
    rows = []
    for n in ns:
        chosen = proxies[:n].argmax(0)
        kept = outcomes[:n][chosen, torch.arange(len(flat))].numpy()  # [B, 2]: all met, score
        rows.append({
            "n": n,
            "kl": best_of_n_kl(n),
            "sqrt_kl": math.sqrt(best_of_n_kl(n)),
            "accuracy": float(np.mean(kept[:, 0])),
            "accuracy_se": standard_error(kept[:, 0]),
            "score": float(np.mean(kept[:, 1])),
            "score_se": standard_error(kept[:, 1]),
            "proxy": float(proxies[:n].max(0).values.mean()),
        })
    return rows
