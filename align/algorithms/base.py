"""The algorithm contract: a small module the one loop drives, with no per-algorithm flags in the loop.

collect(epoch, prompts, group_ids, seeds) -> batch   sample, score, advantages (no grad)
units(batch, generator) -> list                      work items of one pass over the batch
loss(batch, unit) -> (loss, stats)                   one micro-batch's loss, with gradients
state_dict() / load_state_dict()                     whatever must survive a resume
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from align.config import ALGORITHM_CONFIGS
from align.pathway import ImagePathway
from plumbing.registry import Registry

ALGORITHMS: Registry = Registry("algorithm")


def register_algorithm(name: str, config_class: type):
    """Register an algorithm class and its config dataclass under one name."""

    def add(cls):
        ALGORITHM_CONFIGS[name] = config_class
        ALGORITHMS[name] = cls
        return cls

    return add


@dataclass
class Context:
    """What an algorithm may use: the experiment, the model, the rewards and the processes."""

    config: Any  # ExperimentConfig
    adapter: Any  # samplers.adapters.base.Adapter (or a text policy)
    policy: Any  # align.policy.ImagePolicy
    rewards: Any  # rewards.combine.RewardSet
    accelerator: Any  # accelerate.Accelerator

    @property
    def settings(self):
        return self.config.algorithm

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-process tensor over processes (process order)."""
        return self.accelerator.gather(tensor.contiguous())

    def local_slice(self, gathered: torch.Tensor) -> torch.Tensor:
        size = gathered.shape[0] // self.accelerator.num_processes
        start = self.accelerator.process_index * size
        return gathered[start : start + size]


class Algorithm:
    pathway = ImagePathway  # what the run trains, prompts and evaluates (align/pathway.py)

    def __init__(self, context: Context):
        self.context = context

    def collect(self, epoch: int, prompts: list[str], group_ids: torch.Tensor, seeds: list[int]) -> dict:
        raise NotImplementedError

    def units(self, batch: dict, generator: torch.Generator) -> list:
        raise NotImplementedError

    def loss(self, batch: dict, unit) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
