"""The settings of reward backprop (reward_backprop.py: AlignProp, DRaFT, DRaFT-LV, ReFL), data only:
this module imports nothing but the schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from align.algorithms.policy_gradient_config import constraint_spec_problems
from align.schema import param


@dataclass
class RewardBackpropConfig:
    name: str
    grad_steps: int = param(1, min=1)  # K: steps with gradients (draft); more is less biased, more memory
    truncation_min: int = param(1, min=1)  # alignprop: K ~ U[truncation_min, T]
    lv_repeats: int = param(2, min=1)  # draft-lv: re-noised copies of the final latent
    refl_range: list[float] = param(factory=lambda: [0.6, 0.9])  # refl: start step as a fraction of T
    checkpoint: bool = True  # activation checkpointing of each denoiser call and of the decoder
    # ...only where the activations kept without it would exceed this many MiB (0: always): time vs
    # memory; draft and alignprop first replay fewer rows at a time, and checkpoint only where one row
    # alone exceeds it
    checkpoint_above_mb: float = param(512.0, min=0.0)
    # ...and where one call alone exceeds it, checkpoint inside the call too, block by block (the
    # denoiser's, the decoder's): measured at 256 px against trl, 0.62x its memory at 1.74x its time
    checkpoint_blocks: bool = False
    # hacking controls on the maximised reward (align/shaping.py): PAR maximises
    # sigmoid((r - r_ref) / par_temperature) around the reference model's reward for the prompt, so
    # the gradient fades once an image beats the reference by a few temperatures; constraints
    # ([{name, at_most} or {name, at_least}]) subtract lambda x slack per term, one Lagrange multiplier
    # each, moved by constraint_lr x the last batch's violation before every epoch
    shaping: str = param("none", choices=("none", "par"))
    par_temperature: float = param(0.05, gt=0.0)
    constraints: list[dict] = field(default_factory=list)
    constraint_lr: float = param(0.5, gt=0.0)

    def check(self):
        yield from constraint_spec_problems(self.constraints)
        low, high = (self.refl_range + [0, 0])[:2]
        if len(self.refl_range) != 2 or not 0 <= low <= high <= 1:
            yield ["refl_range"], "must be [low, high] with 0 <= low <= high <= 1"

    def check_experiment(self, experiment):
        # the reward itself is maximised: a z-score within the batch (group) averages to 0, whatever
        # the images, so its gradient is zero; running statistics would rescale it by a moving target
        if experiment.rewards.normalise != "none":
            yield (
                ["rewards", "normalise"],
                (
                    f"{self.name} backpropagates the reward itself, and normalise "
                    f"{experiment.rewards.normalise!r} makes its gradient zero or drifting: "
                    "set rewards.normalise: none"
                ),
            )


@dataclass
class AlignPropConfig(RewardBackpropConfig):
    name: str = "alignprop"


@dataclass
class DraftConfig(RewardBackpropConfig):
    name: str = "draft"


@dataclass
class DraftLVConfig(RewardBackpropConfig):
    name: str = "draft-lv"


@dataclass
class ReFLConfig(RewardBackpropConfig):
    name: str = "refl"
