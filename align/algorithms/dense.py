"""DenseGRPO's step-wise credit (`algorithm.dense`): each stochastic step's own advantage, from the gain
of the reward estimated before and after it (the last window step's "after" is the final image: the
ODE completes it exactly), and the optional calibration of each step's noise from those gains. The
arithmetic is pure (align/shaping.py: dense_step_advantages, step_gains, calibrate_noise); this module
estimates the rewards along the trajectory.
"""

from __future__ import annotations

import torch

from align.shaping import calibrate_noise, dense_step_advantages, step_gains
from samplers.rollout import predicted_clean, rollout
from samplers.types import Schedule


@torch.no_grad()
def dense_advantages(context, trajectory, values, group_ids, stochastic, noise_scales):
    """Per stochastic step s, the combined reward estimated at x_s (dense.estimate), and after the window
    the final image's; returns advantages [B, T] (0 off the window) from the gains, the zero-spread
    share, the stats, and the window steps' noise scales for the next epoch (calibration)."""
    dense = context.settings.dense
    if stochastic != list(range(stochastic[0], stochastic[-1] + 1)):
        raise ValueError("algorithm.dense needs one contiguous window of stochastic steps (window.size)")
    everything = context.gather(step_rewards(context, trajectory, values, stochastic))
    credit = dense_step_advantages(
        everything,
        context.gather(group_ids).to(everything.device),
        std_over=dense.std,
        centre=dense.centre,
        credit=dense.credit,
    )
    local = context.local_slice(credit)
    advantages = torch.zeros(local.shape[0], trajectory.log_probs.shape[1], device=local.device)
    advantages[:, stochastic] = local
    gains = step_gains(everything)
    # per window step: the share of samples whose estimated reward the step moved, and its mean gain
    stats = {
        "dense_moved": [float(v) for v in (gains.abs() > 1e-6).float().mean(0)],
        "dense_gain": [float(v) for v in gains.mean(0)],
    }
    if dense.calibration > 0:
        stats["noise_scales"] = [noise_scales.get(s, 1.0) for s in stochastic]
        noise_scales, stats["loss_share"] = calibrate_noise(
            noise_scales, everything, stochastic, dense.calibration, dense.calibration_band
        )
    return advantages, float((credit == 0).all(1).float().mean()), stats, noise_scales


@torch.no_grad()
def step_rewards(context, trajectory, values, stochastic) -> torch.Tensor:
    """[B, len(window) + 1]: the combined reward estimated at each window step's start, then the
    final image's (the ODE completes the chain after the window)."""
    adapter, prompts = context.adapter, trajectory.prompts
    rewards = []
    for s in stochastic:
        x, sigma = trajectory.latents[:, s], trajectory.sigmas[:, s]
        with context.accelerator.autocast():
            if context.settings.dense.estimate == "one_step":
                output = adapter.denoise(x, trajectory.timesteps[:, s], trajectory.cond)
                clean = predicted_clean(adapter, output, x, sigma)
            else:  # the ODE from x_s to the end, by the shared rollout on the rest of the schedule
                rest = Schedule(timesteps=trajectory.timesteps[0, s:], sigmas=trajectory.sigmas[0, s:])
                clean = rollout(
                    adapter.denoise, adapter.step, rest, x, trajectory.cond, prompts=prompts
                ).final
            images = adapter.decode(clean).float().clamp(0, 1)
        rewards.append(context.rewards.combine(context.rewards.score(images, prompts)))
    rewards.append(context.rewards.combine(values))
    return torch.stack(rewards, dim=1)
