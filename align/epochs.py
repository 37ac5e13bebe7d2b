"""An epoch's prompts: which prompts each process samples, with which seeds, and in what order a
curriculum feeds them (align/loop.py's Run asks; tests and benchmarks plan epochs through it too)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from align.config import ExperimentConfig


def training_prompts(modality, train) -> list[str]:
    """The run's training prompts; under a curriculum (train.curriculum_start < 1) ordered easiest first by
    the modality's difficulties (a stable sort), so that plan_epoch draws an epoch from their head."""
    prompts = modality.prompts(train.prompts)
    if train.curriculum_start >= 1.0:
        return prompts
    difficulties = getattr(modality, "difficulties", None)
    if difficulties is None:
        raise ValueError(
            "train.curriculum_start < 1 needs prompts with difficulties, which only text prompts have; "
            "set train.curriculum_start=1.0"
        )
    order = difficulties(train.prompts)
    return [prompt for _, prompt in sorted(zip(order, prompts), key=lambda pair: pair[0])]


@dataclass
class EpochPlan:
    prompts: list[str]  # this process's prompts, group_size copies each
    group_ids: torch.Tensor  # global group index of each sample
    seeds: list[int]  # one sampling seed per sample (global sample index based)


def plan_epoch(
    prompts: list[str], config: ExperimentConfig, epoch: int, process: int, processes: int
) -> EpochPlan:
    """Prompts of an epoch: a seeded shuffled stream of the prompt set, cut into whole groups;
    process k takes the k-th contiguous block of groups. Seeds depend only on the global index,
    so a batch reproduces identically on any number of processes. Under a curriculum (prompts ordered
    easiest first, as Run orders them) an epoch before train.curriculum_epochs draws from the easiest share."""
    train = config.train
    groups_per_process = train.batch_size // train.group_size
    total = groups_per_process * processes
    if epoch < train.curriculum_epochs and train.curriculum_start < 1.0:
        share = train.curriculum_start + (1.0 - train.curriculum_start) * epoch / train.curriculum_epochs
        pool = list(prompts[: max(math.ceil(share * len(prompts)), min(total, len(prompts)))])
        chosen = []
        while len(chosen) < total:
            random.Random(f"curriculum {train.seed} {epoch} {len(chosen)}").shuffle(pool)
            chosen += pool
        chosen = chosen[:total]
    else:
        stream, cycle = [], 0
        while len(stream) < (epoch + 1) * total:
            order = list(prompts)
            random.Random(train.seed * 1_000_003 + cycle).shuffle(order)
            stream += order
            cycle += 1
        chosen = stream[epoch * total : (epoch + 1) * total]
    first = process * groups_per_process
    local, group_ids, seeds = [], [], []
    for g in range(first, first + groups_per_process):
        for j in range(train.group_size):
            local.append(chosen[g])
            group_ids.append(g)
            seeds.append(train.seed * 10_000_019 + epoch * 1_000_003 + g * train.group_size + j)
    return EpochPlan(local, torch.tensor(group_ids), seeds)


def chunks(units: list, count: int) -> list[list]:
    """`units` cut into `count` contiguous, nearly equal chunks (fewer if there are fewer units)."""
    count = max(1, min(count, len(units)))
    size, extra = divmod(len(units), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [units[bounds[i] : bounds[i + 1]] for i in range(count)]
