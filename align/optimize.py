"""Inference-time noise optimisation (ReNO, Eyring et al. 2024) and its baselines.

The initial noise is the parameter and the model is frozen. Per image, maximise

    sum_k w_k R_k(decode(sample(noise)))  -  lambda * reg(noise)

where reg is the negative log-density of the noise's norm under the Gaussian: ||eps|| of a
d-dimensional standard normal has the chi distribution, log p(r) = (d - 1) log r - r^2 / 2 + const,
so reg keeps the noise on the Gaussian shell (r near sqrt(d - 1)) where the model was trained.
Gradients flow through every sampling step (checkpointed) and the decoder; one-step (turbo)
models make an iteration one forward and one backward pass.

Baselines at an equal budget of generated images: the first sample (base), and best-of-N with N
equal to the number of images ReNO generates (one per iteration, and the warm start's candidates).
Exploration (after CARINOX) spends the budget on several starting noises and keeps the best; a warm
start picks each image's starting noise as the best of k candidates (best-of-N's own first k).
Guards against reward hacking: the disagreement guard (an image stops once its proxy ensemble's members
disagree) and the trade guard (an iterate is kept only where no reward term fell below its start).
"""

from __future__ import annotations

import time

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from align.evaluate import score_against
from align.noise_settings import OptimizeSettings
from samplers.noise import generators_from_seeds


def noise_norm_regulariser(noise: torch.Tensor) -> torch.Tensor:
    """-log chi_d(||noise||) up to a constant, per sample [B]: (r^2 / 2) - (d - 1) log r."""
    dims = noise[0].numel()
    radius = noise.flatten(1).norm(dim=1)
    return radius**2 / 2 - (dims - 1) * torch.log(radius)


def clip_per_sample_(grad: torch.Tensor, max_norm: float) -> None:
    """Scale each sample's gradient [B, ...] to a norm of at most max_norm, in place. ReNO optimises
    one image at a time and clips its noise gradient; one clip over the whole batch would shrink every
    image's step by about sqrt(B) and tie each image's step to the others' gradients."""
    norms = grad.flatten(1).norm(dim=1)
    grad.mul_((max_norm / (norms + 1e-12)).clamp(max=1.0).view(-1, *([1] * (grad.ndim - 1))))


def _images(adapter, noise, prompts, num_steps, grad: bool):
    trajectory = adapter.sample(
        prompts, None, num_steps=num_steps, noise=noise, grad_steps=num_steps if grad else 0, checkpoint=grad
    )
    if grad:
        return activation_checkpoint(adapter.decode, trajectory.final, use_reentrant=False)
    return adapter.decode(trajectory.final)


def weighted_reward(rewards: dict, weights: dict, images, prompts, copies: int = 1) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the rewards [B] and each reward's values; with `copies`, images and prompts are
    that many stacked copies of a batch of B and each reward is its mean over them."""
    values = {name: reward(images, prompts).reshape(copies, -1).mean(0) for name, reward in rewards.items()}
    total = sum(weights.get(name, 1.0) * value for name, value in values.items())
    return total, values


def shifted_copies(images: torch.Tensor, count: int, shift: int, generator: torch.Generator) -> torch.Tensor:
    """[B, C, H, W] -> [count * B, C, H, W]: the images as they are, then count - 1 copies each moved by
    a random whole-pixel offset in [-shift, shift] on both axes (edges replicated); differentiable."""
    height, width = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (count - 1, 2), generator=generator).tolist()
    moved = [padded[..., top : top + height, left : left + width] for top, left in offsets]
    return torch.cat([images, *moved])


def augmented_reward(rewards: dict, settings, images, prompts, generator) -> tuple[torch.Tensor, dict]:
    """weighted_reward, each reward its mean over settings.augment copies of the image (shifted_copies)."""
    if settings.augment <= 1:
        return weighted_reward(rewards, settings.weights, images, prompts)
    copies = shifted_copies(images, settings.augment, settings.augment_shift, generator)
    return weighted_reward(rewards, settings.weights, copies, list(prompts) * settings.augment, settings.augment)


def disagreement(rewards: dict, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """[B]: the largest member spread of any proxy ensemble among the rewards (0 where there is none)."""
    spreads = [r.member_spread(images, prompts) for r in rewards.values() if hasattr(r, "member_spread")]
    return torch.stack(spreads).amax(0) if spreads else torch.zeros(len(prompts), device=images.device)


def reno(
    adapter,
    prompts: list[str],
    seeds: list[int],
    rewards: dict,
    settings: OptimizeSettings,
    on_iteration=None,
) -> dict:
    """Optimise one noise per prompt. Returns per-iteration rewards [I+1, B], best noises and images."""
    steps = settings.num_steps or adapter.default_steps
    start = time.perf_counter()
    noise = starting_noise(adapter, prompts, seeds, rewards, settings, steps).requires_grad_(True)
    if not 0.0 <= settings.momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {settings.momentum}")
    optimizer = torch.optim.SGD(
        [noise], lr=settings.lr, momentum=settings.momentum, nesterov=settings.momentum > 0
    )
    history, best_total, best_noise, best_images = [], None, None, None
    frozen = torch.zeros(len(prompts), dtype=torch.bool, device=noise.device)
    first_values = None
    shifts = torch.Generator().manual_seed(0)  # the augmentation guard's offsets, the same every run
    for iteration in range(settings.iterations + 1):
        images = _images(adapter, noise, prompts, steps, grad=True)
        total, values = augmented_reward(rewards, settings, images, prompts, shifts)
        with torch.no_grad():
            current = total.detach()
            if settings.max_disagreement is not None and iteration > 0:
                frozen |= disagreement(rewards, images, prompts).to(frozen.device) > settings.max_disagreement
            if best_total is None:
                best_total, best_noise, best_images = current.clone(), noise.detach().clone(), images.detach()
                first_values = {name: value.detach().clone() for name, value in values.items()}
            else:
                better = (current > best_total) & ~frozen
                if settings.no_trade:  # every term at least where it started
                    for name, value in values.items():
                        better &= value.detach() >= first_values[name]
                best_total = torch.where(better, current, best_total)
                best_noise[better] = noise.detach()[better]
                best_images = best_images.clone()
                best_images[better] = images.detach()[better]
        history.append({"total": current.tolist(), **{k: v.detach().tolist() for k, v in values.items()}})
        if on_iteration is not None:
            on_iteration(iteration, images.detach(), history[-1])
        out_of_time = settings.seconds is not None and time.perf_counter() - start > settings.seconds
        if iteration == settings.iterations or out_of_time:
            break
        loss = -(total - settings.regularisation * noise_norm_regulariser(noise)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_per_sample_(noise.grad, settings.grad_clip)
        held = noise.detach()[frozen].clone()
        optimizer.step()
        with torch.no_grad():  # a frozen image keeps its noise, and its momentum is dropped
            noise[frozen] = held
            buffer = optimizer.state[noise].get("momentum_buffer")
            if buffer is not None:
                buffer[frozen] = 0
    return {
        "history": history,
        "noise": best_noise,
        "images": best_images,
        "reward": best_total,
        "iterations": len(history) - 1,
        "frozen": int(frozen.sum()),  # images the disagreement guard stopped
    }


def candidate_seeds(seeds: list[int], k: int) -> list[int]:
    """The seeds of best-of-N's candidate k for images seeded `seeds` (candidate 0: the seeds themselves)."""
    return [s + 1_000_003 * k for s in seeds]


def starting_noise(adapter, prompts, seeds, rewards: dict, settings: OptimizeSettings, steps: int) -> torch.Tensor:
    """x_T per image: its seed's own (warm_start 1), or best-of-N's pick among its first `warm_start`
    candidates by the objective (the same noises, so the warm start is best-of-k's image exactly)."""
    if settings.warm_start <= 1:
        return adapter.initial_noise(generators_from_seeds(seeds), len(prompts), steps)
    return best_of_n(adapter, prompts, seeds, rewards, settings, settings.warm_start)["noise"]


@torch.no_grad()
def best_of_n(
    adapter, prompts: list[str], seeds: list[int], rewards: dict, settings: OptimizeSettings, n: int
) -> dict:
    """Sample n images per prompt (candidate_seeds 0..n-1) and keep the best by the same reward, with
    the noise it came from."""
    steps = settings.num_steps or adapter.default_steps
    best_total, best_images, best_noise = None, None, None
    for k in range(n):
        noise = adapter.initial_noise(generators_from_seeds(candidate_seeds(seeds, k)), len(prompts), steps)
        images = adapter.decode(adapter.sample(prompts, None, num_steps=steps, noise=noise).final)
        total, _ = weighted_reward(rewards, settings.weights, images, prompts)
        if best_total is None:
            best_total, best_images, best_noise = total.clone(), images.clone(), noise.clone()
        else:
            better = total > best_total
            best_total = torch.where(better, total, best_total)
            best_images[better] = images[better]
            best_noise[better.to(best_noise.device)] = noise[better.to(noise.device)]
    return {"images": best_images, "reward": best_total, "noise": best_noise}


def explore(adapter, prompts, seeds, rewards, settings: OptimizeSettings, on_iteration=None) -> dict:
    """CARINOX-style exploration: `settings.explore` starting noises share the iteration budget;
    the best result per prompt is kept."""
    count = settings.explore
    if settings.warm_start > 1:
        raise ValueError("explore and warm_start both choose starting noises; give one of them")
    share = OptimizeSettings(**{**settings.__dict__, "iterations": max(1, settings.iterations // count - 1)})
    results = [
        reno(adapter, prompts, [s + 7_919 * k for s in seeds], rewards, share, on_iteration)
        for k in range(count)
    ]
    best = results[0]
    for other in results[1:]:
        better = other["reward"] > best["reward"]
        best = {**best, "reward": torch.where(better, other["reward"], best["reward"])}
        best["images"] = best["images"].clone()
        best["images"][better] = other["images"][better]
    best["history"] = results[0]["history"]
    best["iterations"] = sum(r["iterations"] + 1 for r in results) - 1
    return best


def images_generated(iterations: int, warm_start: int = 1) -> int:
    """Images ReNO decodes for `iterations` gradient steps: the start's candidates and one an iteration."""
    return iterations + max(1, warm_start)


def compare_with_best_of_n(
    adapter,
    prompts,
    seeds,
    rewards: dict,
    settings: OptimizeSettings,
    report: dict | None = None,
    on_iteration=None,
) -> dict:
    """The base sample, noise optimisation (ReNO, or exploration when `settings.explore` > 1) and
    best-of-N with as many model evaluations, on the same prompts and seeds, each scored by `report`
    (default: the optimised rewards). Returns {"images": {method: [B,3,H,W]}, "summaries": {method:
    evaluate summary; the optimised one's "vs_baseline" is its paired difference from best-of-N},
    "optimised": the optimiser's result, "best_of_n": N}."""
    with torch.no_grad():  # at the steps the optimiser samples with
        base = adapter.generate(prompts, seeds, num_steps=settings.num_steps)
    optimiser = explore if settings.explore > 1 else reno
    optimised = optimiser(adapter, prompts, seeds, rewards, settings, on_iteration=on_iteration)
    n = images_generated(optimised["iterations"], settings.warm_start)
    baseline = best_of_n(adapter, prompts, seeds, rewards, settings, n)
    images = {"base": base, "best_of_n": baseline["images"], "optimized": optimised["images"].detach()}
    summaries = score_against(images, prompts, seeds, report or rewards, "best_of_n")
    return {"images": images, "summaries": summaries, "optimised": optimised, "best_of_n": n}
