"""The algorithm contract: a small module the one loop drives, with no per-algorithm flags in the loop.

collect(epoch, prompts, group_ids, seeds) -> Collected   sample, score, advantages (no grad)
micro_batches(batch, generator) -> list                  one pass over the batch: the micro-batches (rows,
                                                         and for chain methods the step) that each
                                                         give one loss; steps_per_pass of them share
                                                         an optimiser step
loss(batch, micro_batch) -> (loss, stats)                one micro-batch's loss, with gradients
state_dict() / load_state_dict()                         whatever must survive a resume

One registered name is one small class; variants share helpers through a base class, never through
branches on the name. Names that differ only in their config's defaults (flow-grpo, ddpo, pref-grpo,
adv-grpo) register one class. Objectives are pure functions in align/losses.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from align.config import ALGORITHM_CONFIGS
from align.modality import ImageModality
from plumbing.registry import Registry

ALGORITHMS: Registry = Registry("algorithm", catalogue="align.catalogue")  # every built-in: loaded on a miss


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
    _scorer: Any = None

    @property
    def settings(self):
        return self.config.algorithm

    @property
    def scorer(self):
        """Scores sampled images, on a worker thread with rewards.asynchronous (align/algorithms/scoring.py)."""
        if self._scorer is None:
            from align.algorithms.scoring import Scorer

            self._scorer = Scorer(self.rewards, self.config.rewards.asynchronous)
        return self._scorer

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-process tensor over processes (process order)."""
        return self.accelerator.gather(tensor.contiguous())

    def gather_strings(self, strings: list[str]) -> list[str]:
        """Strings of every process in process order (through accelerate's object gather)."""
        if self.accelerator.num_processes == 1:
            return list(strings)
        from accelerate.utils import gather_object

        return list(gather_object(list(strings)))

    def local_slice(self, gathered: torch.Tensor) -> torch.Tensor:
        size = gathered.shape[0] // self.accelerator.num_processes
        start = self.accelerator.process_index * size
        return gathered[start : start + size]


@dataclass
class Collected:
    """What collect() returns. The loop reads only these fields; each family's subclass adds the data
    its loss trains on."""

    stats: dict[str, Any] = field(default_factory=dict)  # logged as they are (numbers, lists of them)
    values: dict[str, torch.Tensor] | None = None  # {reward: [B]} raw rewards; None: offline data
    images: torch.Tensor | None = None  # [B, 3, H, W] in [0, 1]: the epoch's samples (monitors, grids)


@dataclass
class Rollouts(Collected):
    """Sampled trajectories with their advantages (policy gradient, PRDP, text GRPO)."""

    trajectory: Any = None  # samplers.types.Trajectory [B, T] (or align.text's token trajectory)
    advantages: torch.Tensor | None = None  # [B], or [B, T] when each step has its own (DenseGRPO)
    steps: torch.Tensor | None = None  # [B, K] indices of the trained steps of each sample
    reward: torch.Tensor | None = None  # [B] combined reward, for losses that regress on it (PRDP)


def constraints_for(context: Context, specs: list[dict], lr: float):
    """The run's Lagrange constraints (the algorithm's constraints and constraint_lr), each on a reward term."""
    from align.shaping import Constraint, Constraints

    names = {term.name for term in context.config.rewards.terms}
    for spec in specs:
        if spec["name"] not in names:
            raise ValueError(
                f"constraints: {spec['name']!r} is not a reward term; add it to rewards.terms "
                "(weight 0 scores it without optimising it)"
            )
    # a cap on a maximised term bounds its multiplier by the term's weight (align.shaping.Constraints);
    # the weight is the raw reward's scale in the combined reward only without normalisation
    rewards = context.config.rewards
    weights = {t.name: t.weight for t in rewards.terms if t.weight > 0 and rewards.normalise == "none"}
    return Constraints([Constraint(**spec) for spec in specs], lr, ceilings=weights)


@torch.no_grad()
def reference_rewards(context: Context, cache: dict[str, float], prompts: list[str]) -> torch.Tensor:
    """PAR's centre: the reference model's (LoRA off) combined reward on each prompt's deterministic
    sample (seed 0, the training steps), drawn once per prompt and kept in `cache`. Returns [B]."""
    from samplers.noise import generators_from_seeds

    missing = [p for p in dict.fromkeys(prompts) if p not in cache]
    if missing:
        with context.policy.reference(), context.accelerator.autocast():
            trajectory = context.adapter.sample(
                missing,
                generators_from_seeds([0] * len(missing)),
                num_steps=context.config.sampling.num_steps,
            )
            images = context.adapter.decode(trajectory.final).float()
        combined = context.rewards.combine(context.rewards.score(images, missing))
        cache.update(zip(missing, combined.tolist()))
    return torch.tensor([cache[p] for p in prompts])


def reference_batch(source: str, prompts: list[str], epoch: int) -> torch.Tensor:
    """Real images for the discriminator: toy-world renders of the prompts, or files from a folder."""
    if source == "toy":
        from align.toy.pretrain import render_batch

        return render_batch(prompts, [10**6 + epoch * 10_000 + i for i in range(len(prompts))])
    from pathlib import Path

    from rewards.base import load_image_files

    files = sorted(
        p for p in Path(source).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
    )
    if not files:
        raise ValueError(f"reference_images {source!r}: no image files found")
    rng = random.Random(epoch)
    return load_image_files([str(rng.choice(files)) for _ in prompts])


class Algorithm:
    modality = ImageModality  # what the run trains, prompts and evaluates (align/modality.py)

    def __init__(self, context: Context):
        self.context = context

    def collect(self, epoch: int, prompts: list[str], group_ids: torch.Tensor, seeds: list[int]) -> Collected:
        raise NotImplementedError

    def micro_batches(self, batch: Collected, generator: torch.Generator) -> list:
        raise NotImplementedError

    def loss(self, batch: Collected, unit) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def saved_bytes(function, *args) -> int:
    """Bytes of the activations autograd keeps for backward through one call of `function` (tensors
    counted once per storage, weights included; the inputs themselves left out). The graph
    holds a placeholder, not the tensor: a saved output packed as itself would hold its own grad_fn,
    and that cycle outlives the call (one row's activations, leaked at every measurement)."""
    storages: dict[int, int] = {}
    kept = []  # alive until the count is done, so that no address is reused by another storage

    def pack(tensor):
        kept.append(tensor)
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        output = function(*args)
    del output
    kept.clear()  # the hook (and with it this list) can outlive the call
    known = {t.untyped_storage().data_ptr() for t in args if isinstance(t, torch.Tensor)}
    return sum(size for pointer, size in storages.items() if pointer not in known)
