"""The shared vocabulary: what a sampler step returns, what a rollout records.

Images everywhere are float32 tensors `[B, 3, H, W]` in [0, 1]; PIL only at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

Cond = dict[str, torch.Tensor]  # prompt conditioning, every tensor batched on dim 0


@dataclass
class StepOut:
    """One reverse step `x_t -> x_{t-1}` of a sampler.

    sample    [B, ...] the drawn (or, when `prev` was given, the scored) next latent
    mean      [B, ...] mean of the Gaussian transition
    std       [B]      its standard deviation (0 for a deterministic step)
    log_prob  [B]      log N(sample; mean, std^2), summed over every non-batch dimension;
                       0 where std == 0 (a deterministic step carries no density)
    """

    sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor


@dataclass
class Schedule:
    """The discretisation a rollout follows.

    timesteps [T]    what the denoiser is called with at each step (model units)
    sigmas    [T+1]  what the step function moves between (the family's noise coordinate)
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


@dataclass
class Trajectory:
    """A batch of sampled chains (images) or token sequences (text).

    latents     [B, T+1, ...] x_T ... x_0 (images) ; for text, unused (token ids live in `extra`)
    timesteps   [B, T]        per-sample model timesteps (per-sample so steps can be shuffled)
    sigmas      [B, T+1]      per-sample noise coordinates
    log_probs   [B, T]        log-prob of each transition under the sampling policy (float32)
    noise_levels [T]          noise level used at each step (0 = deterministic ODE step; 0 for text, whose
                              sampling temperature is extra["temperature"])
    cond        dict          conditioning, batched on dim 0
    prompts     list[str]     B prompts
    extra       dict          anything an algorithm keeps alongside (masks, token ids, ...)
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    log_probs: torch.Tensor
    noise_levels: torch.Tensor
    cond: Cond
    prompts: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.log_probs.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]

    def select(self, index: torch.Tensor | list[int] | slice) -> Trajectory:
        """The sub-batch at `index` (rows), every batched field sliced alike."""
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long)
        prompts = self.prompts[index] if isinstance(index, slice) else [self.prompts[int(i)] for i in index]
        return replace(
            self,
            latents=self.latents[index],
            timesteps=self.timesteps[index],
            sigmas=self.sigmas[index],
            log_probs=self.log_probs[index],
            cond=select_batch(self.cond, index),
            prompts=prompts,
            extra=select_batch(self.extra, index),
        )

    @staticmethod
    def cat(parts: list[Trajectory]) -> Trajectory:
        """Concatenate trajectories along the batch (same steps and noise levels)."""
        first = parts[0]
        for other in parts[1:]:
            if not torch.equal(other.noise_levels, first.noise_levels):
                raise ValueError("cannot concatenate trajectories sampled with different noise levels")
        out = {}
        for f in fields(Trajectory):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "noise_levels":
                out[f.name] = first.noise_levels
            elif f.name == "prompts":
                out[f.name] = [p for v in values for p in v]
            elif isinstance(values[0], dict):
                out[f.name] = cat_batch(values)
            else:
                out[f.name] = torch.cat(values)
        return Trajectory(**out)


def select_batch(batch: dict[str, Any], index) -> dict[str, Any]:
    """Rows `index` of every batched tensor in a dict; non-tensors and 0-d tensors pass through."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            out[key] = value[index]
        elif isinstance(value, list):
            out[key] = value[index] if isinstance(index, slice) else [value[int(i)] for i in index]
        else:
            out[key] = value
    return out


def cat_batch(batches: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, value in batches[0].items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            out[key] = torch.cat([b[key] for b in batches])
        elif isinstance(value, list):
            out[key] = [item for b in batches for item in b[key]]
        else:
            out[key] = value
    return out
