"""Sampling a batch in parts and scoring each part as soon as it is decoded.

With `sampling.chunks: K` the batch is sampled in K parts of consecutive rows (every row keeps its own
seed, so a part's samples are the ones the whole batch would draw, up to batch-size numerics). With
`rewards.asynchronous: true` each part's images are handed to one worker thread for scoring while the
next part samples, so a slow reward (a reward server, a large local model on its own device) overlaps
sampling, and training waits only for what is still being scored. Scores are gathered in part order
and the rewards' running statistics updated after the last part, so asynchronous and synchronous
scoring give the same values and the same run (a test).

Logged: time/sampling (the parts' sampling and decoding), time/reward (what the batch waited for
scores after its last part sampled: all of scoring when synchronous, the part not overlapped when
asynchronous) and time/scoring (the scorer's own time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from samplers.types import Trajectory


def part_slices(size: int, parts: int) -> list[slice]:
    """`parts` consecutive slices covering range(size), sizes differing by at most one (none empty)."""
    parts = max(1, min(parts, size))
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


class Scorer:
    """Scores image batches with the run's RewardSet, on a worker thread when asynchronous."""

    def __init__(self, rewards, asynchronous: bool):
        self.rewards = rewards
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring") if asynchronous else None

    def _score(self, images, prompts, grad: bool):
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):  # grad mode is per thread: the caller's travels with the job
            values = self.rewards.score(images, prompts)
        return values, time.perf_counter() - start

    def submit(self, images: torch.Tensor, prompts: Sequence[str]) -> Future:
        grad = torch.is_grad_enabled()
        if self.pool is not None:
            return self.pool.submit(self._score, images, list(prompts), grad)
        future: Future = Future()
        future.set_result(self._score(images, list(prompts), grad))
        return future

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def sample_and_score(
    context, prompts: Sequence[str], sample_part: Callable[[slice], tuple[Trajectory, torch.Tensor]]
) -> tuple[Trajectory, torch.Tensor, dict, dict]:
    """(trajectory, images [B, 3, H, W], values {reward: [B]}, seconds) for the batch, sampled part by
    part with `sample_part(rows) -> (trajectory, images)` and scored as each part is decoded."""
    scorer = context.scorer
    trajectories, images, pending = [], [], []
    sampling = 0.0
    for rows in part_slices(len(prompts), context.config.sampling.chunks):
        start = time.perf_counter()
        trajectory, decoded = sample_part(rows)
        sampling += time.perf_counter() - start
        trajectories.append(trajectory)
        images.append(decoded)
        pending.append(scorer.submit(decoded, prompts[rows]))
    waiting = time.perf_counter()
    results = [future.result() for future in pending]
    waited = time.perf_counter() - waiting
    values = {name: torch.cat([part[name] for part, _ in results]) for name in results[0][0]}
    context.rewards.observe(values)
    seconds = {
        "time/sampling": sampling,
        "time/reward": waited if scorer.pool is not None else sum(s for _, s in results),
        "time/scoring": sum(s for _, s in results),
    }
    trajectory = trajectories[0] if len(trajectories) == 1 else Trajectory.cat(trajectories)
    return trajectory, torch.cat(images), values, seconds
