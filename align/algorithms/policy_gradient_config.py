"""The settings of the algorithms that train on the sampler's own stochastic transitions: Flow-GRPO and
its variants (policy_gradient.py), D3PO (trajectory_dpo.py) and PRDP (prdp.py). Data only: this module
imports nothing but the schema, so a config can be read and checked without the algorithms.

Flow-GRPO's core is its first five fields; how rewards become advantages is one nested section each
(`advantage`, `shaping`, `dense`), the stochastic steps another (`window`), GRPO-Guard a third
(`guard`). A knob that only means something inside a section cannot be written outside it. The flat
keys of the previous release are read for one release, with a one-line warning (`upgrade`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from align.schema import deprecated, moved_keys, param


@dataclass
class SDEWindow:
    """Which sampling steps are stochastic, and so trained (`algorithm.window`)."""

    size: int = param(0, min=0)  # 0: every step stochastic; k: a window of k consecutive steps (Fast)
    starts: list[int] | None = None  # [lo, hi): where the window may start (default: anywhere)
    slide_every: int = param(0, min=0)  # >0: MixGRPO, the window moves one step every N epochs

    def check(self):
        if self.starts is not None and (len(self.starts) != 2 or self.starts[0] >= self.starts[1]):
            yield ["starts"], "must be [lo, hi) with lo < hi"


# the flat keys of earlier releases, read for one release (align.schema.moved_keys)
WINDOW_KEYS = {
    "sde_window": "window.size",
    "sde_window_range": "window.starts",
    "sliding_window_every": "window.slide_every",
}


@dataclass
class DenseAdvantages:
    """`algorithm.dense: {}` turns DenseGRPO's credit on (absent or null: off)."""

    # how a window step's reward is estimated: ode (complete x_s to an image with the ODE, DenseGRPO's
    # choice: exact for a deterministic sampler, T - s extra evaluations) or one_step (x0^ = x - sigma v:
    # one evaluation, blurry at high noise; measured to misattribute credit on the toy model)
    estimate: str = param("ode", choices=("ode", "one_step"))
    # how gains become advantages: each step's group std (step, the paper's) or one std over the batch's
    # gains (batch); centre removes each group's mean gain per step (the paper's baseline)
    std: str = param("step", choices=("step", "batch"))
    centre: bool = True
    # a step's credit: its own gain (gain, the paper's) or the final reward minus the estimate before it
    # (to_go: the gains of it and every later window step; unbiased where later steps are stochastic)
    credit: str = param("gain", choices=("gain", "to_go"))
    # share of Flow-GRPO's whole-trajectory group advantage blended into each window step's (0: dense
    # alone; the trajectory's term credits the samples that meet every constraint at once)
    mix: float = param(0.0, min=0.0, max=1.0)
    # exploration calibration: after each epoch every window step's noise scale moves by this rate, down
    # where its reward gains are mostly losses (share > 0.5 + calibration_band), up where mostly gains or
    # where no sample's reward moved (align/shaping.py calibrate_noise); 0: off
    calibration: float = param(0.0, min=0.0, max=0.5)
    calibration_band: float = param(0.1, min=0.0, max=0.5)


# the flat keys of earlier releases (`dense: true` and dense_<field>), read for one release
DENSE_KEYS = {
    f"dense_{name}": f"dense.{name}"
    for name in ("estimate", "std", "centre", "credit", "mix", "calibration", "calibration_band")
}


def constraint_spec_problems(specs: list[dict]):
    """Config check of `algorithm.constraints`: yields (path, problem) for each malformed entry."""
    for i, spec in enumerate(specs):
        unknown = set(spec) - {"name", "at_most", "at_least"}
        if "name" not in spec or unknown or (("at_most" in spec) == ("at_least" in spec)):
            yield ["constraints", str(i)], "needs name and exactly one of at_most / at_least"


@dataclass
class Advantages:
    """How the combined reward becomes each sample's advantage (`algorithm.advantage`)."""

    # group: GRPO's, against the prompt's group; batch: one mean and std; prompt_tracker: DDPO's
    # running per-prompt statistics (align/shaping.py)
    rule: str = param("group", choices=("group", "batch", "prompt_tracker"))
    scale: bool = True  # divide by a std (False: Dr. GRPO, mean only)
    std: str = param("group", choices=("group", "batch"))  # group: per-group std; batch: one std
    clip: float = param(5.0, gt=0.0)  # |advantage| cap
    signal: str = param("combined", choices=("combined", "win_rate"))  # Pref-GRPO: win rate within group
    tracker_buffer: int = param(32, min=1)  # prompt_tracker: rewards remembered per prompt
    tracker_min_count: int = param(16, min=1)  # below this many, fall back to batch statistics


@dataclass
class Shaping:
    """Reward shaping before advantages (align/shaping.py), each off by default (`algorithm.shaping`)."""

    par: float | None = param(None, gt=0.0)  # PAR: sigmoid((r - r_ref) / par) around the reference's reward
    # Parrot's non-dominated selection over the reward terms: within each prompt's group (the GRPO
    # reading), or over the whole batch as the paper selects (on the toy model that leaves 1-3 of 64
    # samples, easy prompts' ones, training); rank: every sample trains, its signal minus its
    # non-dominated-sorting rank in the group (no weights between the rewards)
    pareto: str = param("none", choices=("none", "group", "batch", "rank"))
    # "Rewarding the Unlikely": successes (combined reward >= unlikeliness_success) that the policy finds
    # likely earn up to `unlikeliness` less, by their likelihood rank within the group
    unlikeliness: float = param(0.0, min=0.0, max=1.0)
    unlikeliness_success: float = 1.0
    # constrained optimisation: [{name: <reward term>, at_most: x} or {name, at_least: x}], one Lagrange
    # multiplier each, moved by constraint_lr x the batch's violation after every epoch
    constraints: list[dict] = field(default_factory=list)
    constraint_lr: float = param(0.5, gt=0.0)

    @property
    def any(self) -> bool:
        return (
            self.par is not None or self.pareto == "rank" or self.unlikeliness > 0 or bool(self.constraints)
        )

    def check(self):
        yield from constraint_spec_problems(self.constraints)


@dataclass
class Guard:
    """GRPO-Guard (Wang et al. 2025; `algorithm.guard`): ratio_norm centres each log importance ratio on
    the mean of the micro-batch's samples at the same step, so the clip acts on both sides;
    step_reweight weights each step's loss by std / |mean's coefficient of the model output|."""

    ratio_norm: bool = False
    step_reweight: bool = False


# the flat keys of earlier releases, read for one release
FLAT_KEYS = {
    **WINDOW_KEYS,
    **DENSE_KEYS,
    "advantage_clip": "advantage.clip",
    "scale_advantages": "advantage.scale",
    "advantage_std": "advantage.std",
    "signal": "advantage.signal",
    "tracker_buffer": "advantage.tracker_buffer",
    "tracker_min_count": "advantage.tracker_min_count",
    **{
        f"{k}": f"shaping.{k}"
        for k in ("pareto", "unlikeliness", "unlikeliness_success", "constraints", "constraint_lr")
    },
    "ratio_norm": "guard.ratio_norm",
    "step_reweight": "guard.step_reweight",
}


@dataclass
class PolicyGradientConfig:
    name: str
    clip_range: float = param(1e-4, gt=0.0)  # PPO clip on the per-dimension ratio: stability vs step size
    beta: float = param(0.04, min=0.0)  # KL weight to the reference (LoRA off): drift vs reward
    timestep_fraction: float = param(1.0, gt=0.0, max=1.0)  # share of stochastic steps trained per sample
    log_prob_reduction: str = param("mean", choices=("mean", "sum"))  # mean: per-dimension (Flow-GRPO/DDPO)
    window: SDEWindow = field(default_factory=SDEWindow)  # the stochastic steps (Fast, MixGRPO)
    advantage: Advantages = field(default_factory=Advantages)
    dense: DenseAdvantages | None = None  # DenseGRPO's step-wise credit; null: one advantage per sample
    shaping: Shaping = field(default_factory=Shaping)
    guard: Guard = field(default_factory=Guard)
    shared_initial_noise: bool = False  # a group starts from one x_T: its spread comes from the SDE alone
    # with CFG, which branches the update trains: both, or the conditional one only (the unconditional
    # prediction held constant, as the Flow-GRPO reference does)
    cfg_gradient: str = param("both", choices=("both", "conditional"))
    # train the first pass on the sampling pass's own graph (its policy is still the one that sampled,
    # so the ratio is 1 and no training forward is needed) where the activations that keeps, estimated
    # from one row, fit under this many MiB; needs train.steps_per_pass 1 and one process; 0: never
    rollout_graph_mb: float = param(0.0, min=0.0)
    reference_images: str | None = None  # Adv-GRPO: "toy" (render the prompts) or a folder of images

    @classmethod
    def upgrade(cls, data: dict, prefix: str) -> dict:
        """The flat keys of earlier releases (sde_window, dense: true, shaping: par, ...)."""
        if isinstance(data.get("advantage"), str):
            deprecated(f"{prefix}advantage: NAME is now {prefix}advantage.rule")
            data["advantage"] = {"rule": data.pop("advantage")}
        if isinstance(data.get("dense"), bool):
            deprecated(f"{prefix}dense: true/false is now {prefix}dense: {{}} (on) or absent (off)")
            data["dense"] = {} if data.pop("dense") else None
        if isinstance(data.get("shaping"), str):
            deprecated(f"{prefix}shaping: par and par_temperature are now {prefix}shaping.par: TEMPERATURE")
            temperature = data.pop("par_temperature", 0.1)
            data["shaping"] = {"par": temperature} if data.pop("shaping") == "par" else {}
        elif "par_temperature" in data:
            deprecated(f"{prefix}par_temperature is now {prefix}shaping.par")
            data.setdefault("shaping", {})["par"] = data.pop("par_temperature")
        moves = (
            FLAT_KEYS
            if data.get("dense") is not None
            else {k: v for k, v in FLAT_KEYS.items() if k not in DENSE_KEYS}
        )
        return moved_keys(
            data, moves, prefix
        )  # dense_* without dense on stay unknown keys, as refused before

    def check(self):
        if self.dense is not None and self.shaping.any:
            yield (
                ["dense"],
                (
                    "dense advantages come from per-step reward gains, which shaping.par, unlikeliness, "
                    "constraints and pareto: rank do not reach; use them without dense"
                ),
            )


@dataclass
class FlowGRPOConfig(PolicyGradientConfig):
    name: str = "flow-grpo"


@dataclass
class TrackerAdvantages(Advantages):
    rule: str = param("prompt_tracker", choices=("group", "batch", "prompt_tracker"))


@dataclass
class DDPOConfig(PolicyGradientConfig):
    name: str = "ddpo"
    beta: float = param(0.0, min=0.0)
    rollout_graph_mb: float = param(2048.0, min=0.0)
    advantage: TrackerAdvantages = field(default_factory=TrackerAdvantages)


@dataclass
class WinRateAdvantages(Advantages):
    signal: str = param("win_rate", choices=("combined", "win_rate"))


@dataclass
class PrefGRPOConfig(PolicyGradientConfig):
    name: str = "pref-grpo"
    advantage: WinRateAdvantages = field(default_factory=WinRateAdvantages)


@dataclass
class AdvGRPOConfig(PolicyGradientConfig):
    name: str = "adv-grpo"
    reference_images: str | None = "toy"


@dataclass
class TrajectoryDPOConfig:
    name: str = "d3po"
    beta: float = param(1000.0, gt=0.0)  # DPO's beta on per-dimension transition log-ratios
    label_smoothing: float = param(0.0, min=0.0, max=0.5)
    reward_margin: float = param(0.0, min=0.0)  # skip pairs whose rewards differ less
    pairing: str = param("best-worst", choices=("best-worst", "all"))  # as online-dpo's
    # D3PO's setting: a prompt's samples start from one x_T, so a pair differs only by the transitions
    # the policy drew and the label is about them (toy, 25 epochs: +0.052 and +0.030 on two seeds;
    # independent x_T +0.030 on one)
    shared_initial_noise: bool = True
    window: SDEWindow = field(default_factory=SDEWindow)  # the stochastic (and trained) steps
    timestep_fraction: float = param(1.0, gt=0.0, max=1.0)  # share of stochastic steps trained per pair
    log_prob_reduction: str = param("mean", choices=("mean", "sum"))
    cfg_gradient: str = param("both", choices=("both", "conditional"))  # as flow-grpo's

    @classmethod
    def upgrade(cls, data: dict, prefix: str) -> dict:
        return moved_keys(data, WINDOW_KEYS, prefix)


@dataclass
class PRDPConfig:
    name: str = "prdp"
    prdp_beta: float = param(10.0, gt=0.0)  # scale from log-ratios (per-dimension mean) to rewards
    clip_range: float = param(1e-2, gt=0.0)  # the proximal clip of each log-ratio (no KL term)
    window: SDEWindow = field(default_factory=SDEWindow)  # the stochastic (and trained) steps
    timestep_fraction: float = param(1.0, gt=0.0, max=1.0)  # share of stochastic steps trained per pair
    log_prob_reduction: str = param("mean", choices=("mean", "sum"))
    shared_initial_noise: bool = False  # a pair starts from one x_T
    cfg_gradient: str = param("both", choices=("both", "conditional"))  # as flow-grpo's

    @classmethod
    def upgrade(cls, data: dict, prefix: str) -> dict:
        return moved_keys(data, WINDOW_KEYS, prefix)
