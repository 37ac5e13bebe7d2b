"""The settings of inference-time methods, data only (no torch): ReNO's noise optimisation
(align/optimize.py) and the searches at an equal evaluation budget (align/search.py). `align optimize`
takes its defaults and its help from here, so each default lives in one place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimizeSettings:
    iterations: int = 50  # gradient steps per image (the budget, with `seconds`)
    seconds: float | None = None  # wall-clock budget; stops early when reached
    lr: float = 5.0  # ReNO's step size on the noise
    regularisation: float = 0.01  # lambda on the norm regulariser
    grad_clip: float = 0.1  # ReNO clips the noise gradient norm
    momentum: float = 0.9  # ReNO's optimiser: SGD with Nesterov momentum 0.9 (0: plain gradient steps)
    num_steps: int | None = None  # sampling steps (default: the model's)
    explore: int = 1  # >1: this many starting noises share the budget; the best is kept
    keep_every: int = 10  # save images every this many iterations
    weights: dict[str, float] = field(default_factory=dict)
    # the disagreement guard: an image whose proxy ensemble's members (rewards/proxy.py) disagree by more
    # than this std stops moving, and no such iterate is kept as its best; None: off
    max_disagreement: float | None = None
    # a warm start: each image starts from the best of this many candidate noises by the objective
    # (candidate_seeds 0..k-1, best-of-N's first k); they count in the budget best-of-N is given
    warm_start: int = 1
    # the trade guard: an iterate is kept only if no reward term falls below its value at the start, so
    # an ensemble's members cannot be traded for each other (one overrated term bought with another)
    no_trade: bool = False
    # the augmentation guard (expectation over transformation): the objective is each reward's mean over
    # this many copies of the image, the first as it is and the others shifted by up to `augment_shift`
    # pixels (edges replicated), so a step cannot buy reward with a pattern one shift undoes; 0/1: off
    augment: int = 0
    augment_shift: int = 2


@dataclass
class SearchSettings:
    budget: int | None = None  # denoiser evaluations per image (default: 21 samples' worth)
    num_steps: int | None = None  # sampling steps (default: the model's)
    noise_level: float = 0.7  # SDE noise of the stochastic (branching / guided) steps
    window: int = 4  # the first `window` steps are stochastic (tree branching, guidance)
    temperature: float = 10.0  # tree: lambda of the soft value backup and of sampled selection
    selection: str = "greedy"  # tree: greedy (DTS*, best soft value + UCB) | sample (DTS)
    exploration: float = 0.1  # tree: UCB constant
    widening: float = 1.0  # tree: a node may have at most ceil(widening * sqrt(visits + 1)) children
    prune_at: tuple[int, ...] = (4,)  # prune: score the candidates after these steps
    keep: float = 0.25  # prune: the fraction kept at each pruning
    guidance: float = 0.5  # guidance: the step along the reward gradient, in noise stds
    weights: dict[str, float] = field(default_factory=dict)

    def steps(self, adapter) -> int:
        return self.num_steps or adapter.default_steps

    def total(self, adapter) -> int:
        return self.budget or 21 * self.steps(adapter)
