"""Run a sampler chain and record everything policy-gradient and backprop methods need."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from samplers.ddim import predict_x0_eps
from samplers.fused import step_kernel
from samplers.noise import Generators
from samplers.types import Cond, Schedule, StepOut, Trajectory

Denoiser = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]
StepFn = Callable[..., StepOut]


def noise_level_per_step(noise_levels: float | Sequence[float] | torch.Tensor, num_steps: int) -> list[float]:
    """A scalar or a per-step sequence as [T] Python floats: read once, before the step loop, which
    then decides on the host whether a step draws noise."""
    if isinstance(noise_levels, torch.Tensor):
        noise_levels = noise_levels.tolist()
    if isinstance(noise_levels, (int, float)):
        return [float(noise_levels)] * num_steps
    levels = [float(level) for level in noise_levels]
    if len(levels) != num_steps:
        raise ValueError(f"noise_levels has {len(levels)} entries for {num_steps} steps; give one per step")
    return levels


def rollout(
    denoiser: Denoiser,
    step_fn: StepFn,
    schedule: Schedule,
    noise: torch.Tensor,
    cond: Cond,
    *,
    prompts: list[str],
    noise_levels: float | Sequence[float] | torch.Tensor = 0.0,
    generators: Generators = None,
    grad_steps: int = 0,
    checkpoint: bool = False,
    graph: bool = False,
    kernel: str = "family",
) -> Trajectory:
    """Sample `x_T -> x_0` for a batch and return the Trajectory.

    noise       [B, ...] x_T in the adapter's latent layout (float32)
    noise_levels  scalar or [T]: 0 makes a step deterministic (ODE); > 0 stochastic (SDE)
    generators  one per sample: step noise of sample i comes from generator i only
    grad_steps  the last `grad_steps` steps run with autograd on (reward backprop, DRaFT-K);
                earlier steps run under no_grad. With `checkpoint`, each of those denoiser calls
                is recomputed in backward, so memory grows with K and not with T.
    graph       keep every stochastic step's autograd graph from the policy to its log-prob, with
                x_t detached between steps (policy-gradient credit, not backprop through the chain):
                `extra` then holds graph_log_probs [B, T], graph_means [B, T, ...] and graph_stds
                [B, T] with gradients, so that the first update, whose policy is still the one that
                sampled, needs no forward pass of its own. Needs grad mode on.
    kernel      "family": the family's step function; "fused": its [T] tables and one fused step
                (samplers/fused.py: the same noise, the same draws; equal to the family's step for
                the flow SDE, within float rounding for the others); "compiled": that step through
                torch.compile(fullgraph=True, dynamic=False). A step that is not linear (DDIM's
                clip_sample) keeps the family's function.
    """
    num_steps = len(schedule)
    if not 0 <= grad_steps <= num_steps:
        raise ValueError(f"grad_steps={grad_steps} must lie in [0, {num_steps}]")
    if len(prompts) != noise.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for a batch of {noise.shape[0]} noises")
    levels = noise_level_per_step(noise_levels, num_steps)
    batch = noise.shape[0]
    device = noise.device
    # float32 once, so that re-scoring from the stored trajectory sees the very same numbers
    timesteps = schedule.timesteps.to(device).float()
    sigmas = schedule.sigmas.to(device).float()
    x = noise.float()
    latents, log_probs = [x], []
    first_grad_step = num_steps - grad_steps
    graph = graph and torch.is_grad_enabled()
    kept: list = []  # with graph: each step's StepOut, its graph to the policy where the step is stochastic
    step = step_kernel(step_fn, sigmas, levels, generators, kernel)
    for i in range(num_steps):
        t = timesteps[i].expand(batch)
        sigma = sigmas[i].expand(batch)
        sigma_next = sigmas[i + 1].expand(batch)
        tracked = i >= first_grad_step or (graph and levels[i] > 0)
        with torch.set_grad_enabled(tracked and torch.is_grad_enabled()):
            if checkpoint and i >= first_grad_step:
                output = activation_checkpoint(denoiser, x, t, cond, use_reentrant=False)
            else:
                output = denoiser(x, t, cond)
            out = step(i, output, x, sigma, sigma_next)
        if graph:
            kept.append(out)
            x = out.sample.detach()
            log_probs.append(out.log_prob.detach())
        else:
            x = out.sample
            log_probs.append(out.log_prob)
        latents.append(x)
    extra = _graph_extra(kept) if graph else {}
    return Trajectory(
        latents=torch.stack(latents, dim=1),
        timesteps=timesteps.expand(batch, num_steps).clone(),
        sigmas=sigmas.expand(batch, num_steps + 1).clone(),
        log_probs=torch.stack(log_probs, dim=1),
        noise_levels=torch.tensor(levels, dtype=torch.float64),
        cond=cond,
        prompts=list(prompts),
        extra=extra,
    )


def _graph_extra(kept: list) -> dict:
    """The kept steps' log-probs, means and stds [B, T, ...], with their graphs to the policy."""
    return {
        "graph_log_probs": torch.stack([out.log_prob for out in kept], dim=1),
        "graph_means": torch.stack([out.mean for out in kept], dim=1),
        "graph_stds": torch.stack([out.std for out in kept], dim=1),
    }


def rescore(denoiser: Denoiser, step_fn: StepFn, trajectory: Trajectory, step: int | torch.Tensor) -> StepOut:
    """Re-score transition `step` of every chain (an int, or [B] per-sample step indices).

    Returns the StepOut whose log_prob [B] is the current policy's log-density of the recorded
    next latent; with unchanged weights it equals `trajectory.log_probs[:, step]` exactly.
    """
    batch = trajectory.batch_size
    index = torch.as_tensor(step, device=trajectory.latents.device).long().expand(batch)
    rows = torch.arange(batch, device=index.device)
    x = trajectory.latents[rows, index]
    prev = trajectory.latents[rows, index + 1]
    t = trajectory.timesteps[rows, index]
    sigma = trajectory.sigmas[rows, index]
    sigma_next = trajectory.sigmas[rows, index + 1]
    noise_level = trajectory.noise_levels.to(index.device)[index]
    output = denoiser(x, t, trajectory.cond)
    return step_fn(output, x, sigma, sigma_next, noise_level=noise_level, prev=prev)


def predicted_clean(adapter, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The one-step (Tweedie) estimate of the clean latent from a model output at noise `sigma` [B]."""
    view = sigma.float().view(-1, *([1] * (x.ndim - 1)))
    if adapter.family == "flow":  # x = (1 - sigma) x0 + sigma eps, output = eps - x0
        return x.float() - view * output.float()
    prediction = adapter.pipeline.scheduler.config.get("prediction_type", "epsilon")
    return predict_x0_eps(output.float(), x.float(), (1 - view**2).sqrt(), view, prediction)[0]
