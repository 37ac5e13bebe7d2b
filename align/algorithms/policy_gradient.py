"""Policy-gradient fine-tuning of the sampler: Flow-GRPO (and its Fast / MixGRPO variants), DDPO,
Pref-GRPO and Adv-GRPO. One class, four registered names that differ only in their config's defaults
(nothing here reads the name).

Per epoch: roll out groups of samples per prompt with a stochastic sampler (SDE for flow models,
DDIM with eta for UNets), score them, turn rewards into advantages, then minimise PPO's clipped
surrogate on re-scored transitions (plus beta * KL to the LoRA-disabled reference on the SDE
mean, Flow-GRPO eq. 12). Only stochastic steps carry a log-prob, so only they are trained.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field

import torch

from align.algorithms.base import (
    Algorithm,
    Rollouts,
    constraints_for,
    reference_rewards,
    register_algorithm,
    saved_bytes,
)
from align.losses import (
    gaussian_mean_kl,
    group_advantages,
    ppo_clip_loss,
    ratio_norm_shift,
    step_gradient_weights,
)
from align.schema import param
from align.shaping import (
    calibrate_noise,
    constraint_spec_problems,
    dense_step_advantages,
    par_shape,
    pareto_front,
    pareto_rank_signal,
    step_gains,
    unlikeliness_bonus,
)
from samplers.noise import generators_from_seeds
from samplers.rollout import predicted_clean, rollout
from samplers.types import Schedule, StepOut


@dataclass
class PolicyGradientConfig:
    name: str
    clip_range: float = param(1e-4, gt=0.0)  # PPO clip on the per-dimension ratio: stability vs step size
    advantage_clip: float = param(5.0, gt=0.0)  # |advantage| cap
    beta: float = param(0.04, min=0.0)  # KL weight to the reference (LoRA off): drift vs reward
    timestep_fraction: float = param(1.0, gt=0.0, max=1.0)  # share of stochastic steps trained per sample
    log_prob_reduction: str = param("mean", choices=("mean", "sum"))  # mean: per-dimension (Flow-GRPO/DDPO)
    advantage: str = param("group", choices=("group", "prompt_tracker", "batch"))
    scale_advantages: bool = True  # divide by a std (False: Dr. GRPO, mean only)
    advantage_std: str = param("group", choices=("group", "batch"))  # group: per-group std; batch: one std
    sde_window: int = param(0, min=0)  # 0: every step stochastic; k: only a window of k steps (Fast)
    sde_window_range: list[int] | None = None  # [lo, hi): where the window may start (default: anywhere)
    sliding_window_every: int = param(0, min=0)  # >0: MixGRPO, the window moves one step every N epochs
    tracker_buffer: int = param(32, min=1)  # DDPO per-prompt statistics: rewards remembered per prompt
    tracker_min_count: int = param(16, min=1)  # below this many, fall back to batch statistics
    signal: str = param("combined", choices=("combined", "win_rate"))  # Pref-GRPO: win rate within group
    reference_images: str | None = None  # Adv-GRPO: "toy" (render the prompts) or a folder of images
    shared_initial_noise: bool = False  # a group starts from one x_T: its spread comes from the SDE alone
    # with CFG, which branches the update trains: both, or the conditional one only (the unconditional
    # prediction held constant, as the Flow-GRPO reference does)
    cfg_gradient: str = param("both", choices=("both", "conditional"))
    # DenseGRPO: each stochastic step's own advantage, from the gain of the reward estimated before and
    # after it (the last window step's "after" is the final image: the ODE completes it exactly)
    dense: bool = False
    # how a window step's reward is estimated: ode (complete x_s to an image with the ODE, DenseGRPO's
    # choice: exact for a deterministic sampler, T - s extra evaluations) or one_step (x0^ = x - sigma v:
    # one evaluation, blurry at high noise; measured to misattribute credit on the toy model)
    dense_estimate: str = param("ode", choices=("ode", "one_step"))
    # how gains become advantages: each step's group std (step, the paper's) or one std over the batch's
    # gains (batch); dense_centre removes each group's mean gain per step (the paper's baseline)
    dense_std: str = param("step", choices=("step", "batch"))
    dense_centre: bool = True
    # a step's credit: its own gain (gain, the paper's) or the final reward minus the estimate before it
    # (to_go: the gains of it and every later window step; unbiased where later steps are stochastic)
    dense_credit: str = param("gain", choices=("gain", "to_go"))
    # share of Flow-GRPO's whole-trajectory group advantage blended into each window step's (0: dense
    # alone; the trajectory's term credits the samples that meet every constraint at once)
    dense_mix: float = param(0.0, min=0.0, max=1.0)
    # DenseGRPO's exploration calibration: after each epoch every window step's noise scale moves by
    # this rate, down where its reward gains are mostly losses (share > 0.5 + dense_calibration_band),
    # up where mostly gains or where no sample's reward moved (align/shaping.py calibrate_noise); 0: off
    dense_calibration: float = param(0.0, min=0.0, max=0.5)
    dense_calibration_band: float = param(0.1, min=0.0, max=0.5)
    # reward shaping before advantages (align/shaping.py): PAR's sigmoid around the reference model's
    # reward for the prompt, and Parrot's Pareto selection (only non-dominated samples of the batch train)
    shaping: str = param("none", choices=("none", "par"))
    par_temperature: float = param(0.1, gt=0.0)
    # Parrot's non-dominated selection over the reward terms: within each prompt's group (the GRPO
    # reading: a group is the set of images one prompt competes in), or over the whole batch as the
    # paper selects (on the toy model that leaves 1-3 of 64 samples, easy prompts' ones, training);
    # rank: every sample trains, its signal minus its non-dominated-sorting rank in the group (no
    # weights between the rewards; the group's front earns the most)
    pareto: str = param("none", choices=("none", "group", "batch", "rank"))
    # "Rewarding the Unlikely": successes (combined reward >= unlikeliness_success) that the policy finds
    # likely earn up to `unlikeliness` less, by their likelihood rank within the group
    unlikeliness: float = param(0.0, min=0.0, max=1.0)
    unlikeliness_success: float = 1.0
    # constrained optimisation: [{name: <reward term>, at_most: x} or {name, at_least: x}], one Lagrange
    # multiplier each, moved by constraint_lr x the batch's violation after every epoch
    constraints: list[dict] = field(default_factory=list)
    constraint_lr: float = param(0.5, gt=0.0)
    # train the first pass on the sampling pass's own graph (its policy is still the one that sampled,
    # so the ratio is 1 and no training forward is needed) where the activations that keeps, estimated
    # from one row, fit under this many MiB; needs train.steps_per_pass 1 and one process; 0: never
    rollout_graph_mb: float = param(0.0, min=0.0)
    # GRPO-Guard (Wang et al. 2025): ratio_norm centres each log importance ratio on the mean of the
    # micro-batch's samples at the same step, so the clip acts on both sides; step_reweight weights
    # each step's loss by std / |mean's coefficient of the model output| (align/losses.py)
    ratio_norm: bool = False
    step_reweight: bool = False

    def check(self):
        shaped = self.shaping != "none" or self.unlikeliness > 0 or self.constraints or self.pareto == "rank"
        if self.dense and shaped:
            yield (
                ["dense"],
                (
                    "dense advantages come from per-step reward gains, which shaping, unlikeliness, "
                    "constraints and pareto: rank do not reach; use them without dense"
                ),
            )
        if not self.dense and (
            self.dense_std != "step" or not self.dense_centre or self.dense_credit != "gain" or self.dense_mix
        ):
            yield (
                ["dense"],
                "dense_std, dense_centre, dense_credit and dense_mix shape dense advantages: set dense: true",
            )
        if self.dense_calibration > 0 and not self.dense:
            yield ["dense_calibration"], "calibrates the noise from dense reward gains: set dense: true"
        yield from constraint_spec_problems(self.constraints)
        if self.sde_window_range is not None and (
            len(self.sde_window_range) != 2 or self.sde_window_range[0] >= self.sde_window_range[1]
        ):
            yield ["sde_window_range"], "must be [lo, hi) with lo < hi"


@dataclass
class FlowGRPOConfig(PolicyGradientConfig):
    name: str = "flow-grpo"


@dataclass
class DDPOConfig(PolicyGradientConfig):
    name: str = "ddpo"
    beta: float = param(0.0, min=0.0)
    rollout_graph_mb: float = param(2048.0, min=0.0)
    advantage: str = param("prompt_tracker", choices=("group", "prompt_tracker", "batch"))


@dataclass
class PrefGRPOConfig(PolicyGradientConfig):
    name: str = "pref-grpo"
    signal: str = param("win_rate", choices=("combined", "win_rate"))


@dataclass
class AdvGRPOConfig(PolicyGradientConfig):
    name: str = "adv-grpo"
    reference_images: str | None = "toy"


@dataclass
class PromptStatTracker:
    """DDPO's per-prompt reward statistics (Black et al. 2023, sec. 4.3): normalise each reward by the
    mean and std of the last `buffer` rewards of its prompt, or of the batch while that is too short."""

    buffer: int = 32
    min_count: int = 16
    history: dict[str, list[float]] = field(default_factory=dict)

    def advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        values = rewards.tolist()
        for prompt, value in zip(prompts, values):
            self.history.setdefault(prompt, []).append(value)
            self.history[prompt] = self.history[prompt][-self.buffer :]
        out = torch.empty_like(rewards)
        for i, prompt in enumerate(prompts):
            seen = self.history[prompt]
            pool = torch.tensor(seen) if len(seen) >= self.min_count else rewards
            out[i] = (rewards[i] - pool.mean()) / (pool.std() + 1e-6)
        return out


# A step that starts below this sigma stays deterministic: its SDE noise (std ~ noise_level * sigma) is
# far below what changes a pixel, so it carries no credit, while its log-prob gradient, which grows as
# 1 / std, is the largest of the chain. (Flow schedules end with such a step: sigma 0.001 -> 0.)
MIN_STOCHASTIC_SIGMA = 0.01


def noise_levels(
    settings: PolicyGradientConfig,
    level: float,
    sigmas: list[float],
    epoch: int,
    rng: random.Random,
):
    """[T] noise level per step: `level` on the stochastic window, 0 (ODE) elsewhere and on every step
    starting below MIN_STOCHASTIC_SIGMA. sigmas [T + 1]: the schedule's."""
    num_steps = len(sigmas) - 1
    live = [i for i in range(num_steps) if sigmas[i] >= MIN_STOCHASTIC_SIGMA]
    if settings.sde_window == 0 or settings.sde_window >= len(live):
        window = set(live)
    else:
        lo, hi = settings.sde_window_range or (0, len(live) - settings.sde_window + 1)
        hi = min(hi, len(live) - settings.sde_window + 1)
        if settings.sliding_window_every:
            start = lo + (epoch // settings.sliding_window_every) % max(1, hi - lo)
        else:
            start = rng.randrange(lo, max(lo + 1, hi))
        window = set(live[start : start + settings.sde_window])
    return [level if i in window else 0.0 for i in range(num_steps)]


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


class PolicyGradient(Algorithm):
    def __init__(self, context):
        super().__init__(context)
        settings = context.settings
        if settings.beta > 0 and context.config.train.trainable != "lora":
            raise ValueError(
                "algorithm.beta > 0 needs train.trainable=lora (the reference is the LoRA disabled)"
            )
        if settings.reference_images is None and context.rewards.trainable:
            raise ValueError(
                "a trainable reward (discriminator) needs algorithm.reference_images (use adv-grpo)"
            )
        if settings.signal == "win_rate" and context.config.train.group_size < 2:
            raise ValueError("signal=win_rate compares samples within a group: set train.group_size >= 2")
        self.tracker = PromptStatTracker(settings.tracker_buffer, settings.tracker_min_count)
        self.constraints = constraints_for(context)
        self.reference_rewards: dict[str, float] = {}  # PAR: the reference model's reward per prompt
        self.noise_scales: dict[int, float] = {}  # DenseGRPO calibration: step index -> noise scale
        self.row_call_bytes: int | None = None  # rollout_graph_mb: one row's activations of one call

    # --- collection ---------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        context, settings = self.context, self.context.settings
        config, adapter = context.config, context.adapter
        num_steps = config.sampling.num_steps
        rng = random.Random(config.train.seed * 1_000_003 + epoch)
        sigmas = adapter.schedule(num_steps).sigmas.tolist()
        levels = noise_levels(settings, config.sampling.noise_level, sigmas, epoch, rng)
        levels = [level * self.noise_scales.get(i, 1.0) for i, level in enumerate(levels)]
        start = time.perf_counter()
        generators, noise = generators_from_seeds(seeds), None
        if settings.shared_initial_noise:
            # x_T from the group's first seed, the SDE noise from each sample's own (offset) seed: the
            # rewards of a group then differ only by what the policy drew, so the credit is the policy's.
            first: dict[int, int] = {}
            for group, seed in zip(group_ids.tolist(), seeds):
                first.setdefault(group, seed)
            noise = adapter.initial_noise(
                generators_from_seeds([first[g] for g in group_ids.tolist()]), len(seeds), num_steps
            )
            generators = generators_from_seeds([seed + 7_777_777 for seed in seeds])
        graph = self._rollout_graph(prompts, num_steps, levels)
        guidance = (
            adapter.detached_unconditional()
            if graph and settings.cfg_gradient == "conditional"
            else contextlib.nullcontext()
        )
        with context.accelerator.autocast():
            with torch.set_grad_enabled(graph), guidance:
                trajectory = adapter.sample(
                    prompts, generators, num_steps=num_steps, noise_levels=levels, noise=noise, graph=graph
                )
            images = adapter.decode(trajectory.final).float()
        sampled = time.perf_counter()
        values = context.rewards.score(images, prompts)
        stats = {}
        for name, reward in context.rewards.trainable.items():
            real = reference_batch(settings.reference_images, prompts, epoch).to(images.device)
            stats.update({f"{name}/{k}": v for k, v in reward.update(real, images).items()})
        stochastic = [i for i, level in enumerate(levels) if level > 0]
        if not stochastic:
            raise ValueError("sampling.noise_level is 0: no stochastic step to train; set it above 0")
        signal = combined = self._signal(values, group_ids)
        if settings.pareto == "rank":
            signal = pareto_rank_signal(
                torch.stack(list(values.values()), dim=1), group_ids.to(signal.device)
            )
            stats["pareto_front_fraction"] = float((signal == 0).float().mean())
        signal, shaping_stats = self._shaped(prompts, values, signal, group_ids, trajectory, stochastic)
        stats.update(shaping_stats)
        if settings.dense:
            advantages, zero_std, dense_stats = self._dense_advantages(
                trajectory, values, group_ids, stochastic
            )
            stats.update(dense_stats)
            if settings.dense_mix > 0:  # blend in the whole trajectory's group advantage on every step
                trajectory_advantages, _ = self._advantages(prompts, signal, group_ids)
                window = torch.zeros_like(advantages)
                window[:, stochastic] = trajectory_advantages.to(advantages.device)[:, None]
                advantages = (1 - settings.dense_mix) * advantages + settings.dense_mix * window
        else:
            advantages, zero_std = self._advantages(prompts, signal, group_ids)
        if settings.pareto in ("group", "batch"):
            front = pareto_front(
                torch.stack(list(values.values()), dim=1), group_ids if settings.pareto == "group" else None
            )
            advantages = advantages * front.view(-1, *([1] * (advantages.ndim - 1))).to(advantages.dtype)
            stats["pareto_front_fraction"] = float(front.float().mean())
        scored = time.perf_counter()
        count = max(1, round(len(stochastic) * settings.timestep_fraction))
        generator = torch.Generator().manual_seed(config.train.seed * 7919 + epoch)
        steps = torch.stack(
            [
                torch.tensor(stochastic)[torch.randperm(len(stochastic), generator=generator)[:count]]
                for _ in prompts
            ]
        )
        stats.update(
            {
                "reward": float((combined if settings.pareto == "rank" else signal).mean()),
                "reward_std_in_groups": _mean_group_std(signal, group_ids),
                "advantage_abs_mean": float(
                    advantages[:, stochastic].abs().mean()
                    if advantages.ndim == 2
                    else advantages.abs().mean()
                ),
                "zero_std_fraction": zero_std,
                "rollout_graph": float(graph),
                "time/sampling": sampled - start,
                "time/reward": scored - sampled,
                "noise_window": [i for i, level in enumerate(levels) if level > 0],
            }
        )
        return Rollouts(
            stats=stats,
            values=values,
            images=images,
            trajectory=trajectory,
            advantages=advantages,
            steps=steps,
        )

    def _signal(self, values, group_ids):
        rewards = self.context.rewards
        rewards.observe(values)
        if self.context.settings.signal == "win_rate":
            from rewards.combine import group_win_rate

            return group_win_rate(rewards.combine(values), group_ids)
        return rewards.combine(values, group_ids)

    def _shaped(self, prompts, values, signal, group_ids, trajectory, stochastic):
        """PAR, the unlikeliness bonus and the constraints' Lagrangian on the combined reward."""
        settings, stats = self.context.settings, {}
        if self.constraints.constraints:
            stats.update({f"lambda/{k}": v for k, v in self.constraints.multipliers.items()})
            signal = self.constraints.shape(signal, values)
            self.constraints.update({name: self.context.gather(v) for name, v in values.items()})
        if settings.shaping == "par":
            reference = reference_rewards(self.context, self.reference_rewards, prompts).to(signal.device)
            stats["par_reference"] = float(reference.mean())
            signal = par_shape(signal, reference, settings.par_temperature)
        if settings.unlikeliness > 0:
            likelihood = trajectory.log_probs[:, stochastic].sum(1).to(signal.device)
            signal = unlikeliness_bonus(
                signal,
                likelihood,
                group_ids.to(signal.device),
                settings.unlikeliness,
                settings.unlikeliness_success,
            )
        return signal, stats

    @torch.no_grad()
    def _dense_advantages(self, trajectory, values, group_ids, stochastic):
        """DenseGRPO: per stochastic step s, the combined reward estimated at x_s (dense_estimate), and
        after the window the final image's; advantages [B, T] (0 off the window) from the gains, the
        zero-spread share, and the calibration's stats (the window steps' noise scales move after)."""
        context = self.context
        if stochastic != list(range(stochastic[0], stochastic[-1] + 1)):
            raise ValueError("algorithm.dense needs one contiguous window of stochastic steps (sde_window)")
        step_rewards = self._step_rewards(trajectory, values, stochastic)
        everything = context.gather(step_rewards)
        dense = dense_step_advantages(
            everything,
            context.gather(group_ids).to(everything.device),
            std_over=context.settings.dense_std,
            centre=context.settings.dense_centre,
            credit=context.settings.dense_credit,
        )
        local = context.local_slice(dense)
        advantages = torch.zeros(local.shape[0], trajectory.log_probs.shape[1], device=local.device)
        advantages[:, stochastic] = local
        gains = step_gains(everything)
        # per window step: the share of samples whose estimated reward the step moved, and its mean gain
        stats = {
            "dense_moved": [float(v) for v in (gains.abs() > 1e-6).float().mean(0)],
            "dense_gain": [float(v) for v in gains.mean(0)],
        }
        if context.settings.dense_calibration > 0:
            stats["noise_scales"] = [self.noise_scales.get(s, 1.0) for s in stochastic]
            self.noise_scales, stats["loss_share"] = calibrate_noise(
                self.noise_scales,
                everything,
                stochastic,
                context.settings.dense_calibration,
                context.settings.dense_calibration_band,
            )
        return advantages, float((dense == 0).all(1).float().mean()), stats

    @torch.no_grad()
    def _step_rewards(self, trajectory, values, stochastic) -> torch.Tensor:
        """[B, len(window) + 1]: the combined reward estimated at each window step's start, then the
        final image's (the ODE completes the chain after the window)."""
        context = self.context
        adapter, prompts = context.adapter, trajectory.prompts
        step_rewards = []
        for s in stochastic:
            x, sigma = trajectory.latents[:, s], trajectory.sigmas[:, s]
            with context.accelerator.autocast():
                if context.settings.dense_estimate == "one_step":
                    output = adapter.denoise(x, trajectory.timesteps[:, s], trajectory.cond)
                    clean = predicted_clean(adapter, output, x, sigma)
                else:  # the ODE from x_s to the end, by the shared rollout on the rest of the schedule
                    rest = Schedule(timesteps=trajectory.timesteps[0, s:], sigmas=trajectory.sigmas[0, s:])
                    clean = rollout(
                        adapter.denoise, adapter.step, rest, x, trajectory.cond, prompts=prompts
                    ).final
                images = adapter.decode(clean).float().clamp(0, 1)
            step_rewards.append(context.rewards.combine(context.rewards.score(images, prompts)))
        step_rewards.append(context.rewards.combine(values))
        return torch.stack(step_rewards, dim=1)

    def _advantages(self, prompts, signal, group_ids):
        context, settings = self.context, self.context.settings
        everything = context.gather(signal)
        all_groups = context.gather(group_ids)
        if settings.advantage == "group":
            advantages, zero_std = group_advantages(
                everything, all_groups, scale=settings.scale_advantages, std_over=settings.advantage_std
            )
        elif settings.advantage == "batch":
            advantages, zero_std = (everything - everything.mean()) / (everything.std() + 1e-6), 0.0
        else:
            all_prompts = [p for p in _gather_prompts(context, prompts)]
            advantages, zero_std = self.tracker.advantages(all_prompts, everything), 0.0
        return context.local_slice(advantages), zero_std

    # --- training -----------------------------------------------------------------------------

    def _rollout_graph(self, prompts, num_steps: int, levels: list[float]) -> bool:
        """Sample with the graph kept (rollout_graph_mb)? Only where every unit of the first pass
        trains before the one optimiser step (steps_per_pass 1, one process: under DDP each forward
        would expect its own backward) and the stochastic steps' activations, estimated once from
        one row of one denoiser call, fit under the limit."""
        context, settings = self.context, self.context.settings
        if (
            settings.rollout_graph_mb == 0
            or context.config.train.steps_per_pass != 1
            or context.accelerator.num_processes != 1
        ):
            return False
        if self.row_call_bytes is None:  # measured once: neither the step nor the prompt changes it
            adapter = context.adapter
            x = adapter.initial_noise(generators_from_seeds([0]), 1, num_steps)
            t = adapter.schedule(num_steps).timesteps[:1].to(x.device).float()
            with context.accelerator.autocast(), adapter.eager():
                self.row_call_bytes = saved_bytes(adapter.denoise, x, t, adapter.encode(prompts[:1]))
        stochastic = sum(1 for level in levels if level > 0)
        return len(prompts) * stochastic * self.row_call_bytes <= settings.rollout_graph_mb * 2**20

    def units(self, batch, generator):
        """Micro-batches of shuffled samples; within each, one unit per trained step (Flow-GRPO order).
        A batch sampled with its graph kept trains its first pass as one unit: every micro-batch's
        loss on the sampling pass's own log-probs (the same order drawn, the same mean over units)."""
        size = self.context.config.train.micro_batch_size
        order = torch.randperm(batch.steps.shape[0], generator=generator)
        units = [
            (order[i : i + size], k) for i in range(0, len(order), size) for k in range(batch.steps.shape[1])
        ]
        extra = batch.trajectory.extra
        if "graph_log_probs" not in extra:
            return units
        graph = {name: extra.pop(f"graph_{name}") for name in ("log_probs", "means", "stds")}
        return [GraphPass(units, graph)]

    def loss(self, batch, unit):
        if isinstance(unit, GraphPass):  # the mean of its units' losses, on the graph the first time only
            graph, unit.graph = unit.graph, None
            parts = [self._unit_loss(batch, rows, k, graph) for rows, k in unit.units]
            loss = torch.stack([part for part, _ in parts]).mean()
            stats = {key: sum(s[key] for _, s in parts) / len(parts) for key in parts[0][1]}
            return loss, stats | {"policy_loss": float(loss.detach())}
        rows, k = unit
        return self._unit_loss(batch, rows, k)

    def _unit_loss(self, batch, rows, k, graph=None):
        context, settings = self.context, self.context.settings
        trajectory = batch.trajectory.select(rows)
        steps = batch.steps[rows, k]
        if graph is None:
            guidance = (
                context.adapter.detached_unconditional()
                if settings.cfg_gradient == "conditional"
                else contextlib.nullcontext()
            )
            with context.accelerator.autocast(), guidance:
                out = context.adapter.rescore(trajectory, steps)
        else:
            at = (rows.to(steps.device), steps)
            out = StepOut(
                sample=None,
                mean=graph["means"][at],
                std=graph["stds"][at],
                log_prob=graph["log_probs"][at],
            )
        old = trajectory.log_probs[torch.arange(len(rows)), steps]
        scale = 1.0 / trajectory.latents[0, 0].numel() if settings.log_prob_reduction == "mean" else 1.0
        advantages = batch.advantages[rows]
        if advantages.ndim == 2:  # dense: each trained step its own advantage
            advantages = advantages[torch.arange(len(rows)), steps]
        advantages = advantages.clamp(-settings.advantage_clip, settings.advantage_clip)
        if settings.step_reweight:
            advantages = advantages * self._step_weights(trajectory).to(advantages.device)[steps]
        log_prob, old = out.log_prob * scale, old * scale
        raw_ratio = float(torch.exp(log_prob.detach() - old).mean())
        if settings.ratio_norm:
            old = old + ratio_norm_shift(log_prob - old, steps)
        loss, stats = ppo_clip_loss(log_prob, old, advantages, settings.clip_range)
        stats["raw_ratio_mean"] = raw_ratio
        if settings.beta > 0:
            with torch.no_grad(), context.policy.reference(), context.accelerator.autocast():
                reference = context.adapter.rescore(trajectory, steps)
            kl = gaussian_mean_kl(out.mean, reference.mean, out.std).mean()
            loss = loss + settings.beta * kl
            stats["kl"] = float(kl.detach())
        stats["policy_loss"] = float(loss.detach())
        return loss, stats

    def _step_weights(self, trajectory) -> torch.Tensor:
        """[T] GRPO-Guard weights of the schedule's steps (align.losses.step_gradient_weights), from the
        step function itself: the mean's coefficient of the model output is mean(v = 1) - mean(v = 0)."""
        sigmas, levels = trajectory.sigmas[0].float(), trajectory.noise_levels.float()
        count = levels.shape[0]
        zero, one = torch.zeros(count, 1), torch.ones(count, 1)
        x = torch.zeros(count, 1)
        step = self.context.adapter.step
        at_zero = step(zero, x, sigmas[:-1], sigmas[1:], noise_level=levels, prev=x)
        at_one = step(one, x, sigmas[:-1], sigmas[1:], noise_level=levels, prev=x)
        coefficient = (at_one.mean - at_zero.mean).flatten()
        return step_gradient_weights(at_one.std.float(), coefficient, levels > 0)

    def state_dict(self):
        return {
            "tracker": {p: list(v) for p, v in self.tracker.history.items()},
            "constraints": self.constraints.state_dict(),
            "reference_rewards": dict(self.reference_rewards),
            "noise_scales": dict(self.noise_scales),
        }

    def load_state_dict(self, state):
        self.tracker.history = {p: list(v) for p, v in state.get("tracker", {}).items()}
        self.constraints.load_state_dict(state.get("constraints", {}))
        self.reference_rewards = dict(state.get("reference_rewards", {}))
        self.noise_scales = {int(k): float(v) for k, v in state.get("noise_scales", {}).items()}


@dataclass
class GraphPass:
    """A first pass trained as one unit on the sampling pass's graph: the micro-batch units it stands
    for, and the graph (log-probs, means, stds [B, T] with gradients), spent by the first loss taken;
    a later loss of the same unit rescores its units under the policy of that moment."""

    units: list
    graph: dict | None


def _mean_group_std(values: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Mean over groups of the within-group std of `values`: the spread GRPO can learn from."""
    stds = [values[group_ids == g].std() for g in group_ids.unique() if int((group_ids == g).sum()) > 1]
    return float(torch.stack(stds).mean()) if stds else 0.0


def _gather_prompts(context, prompts: list[str]) -> list[str]:
    """Prompts of every process in process order (strings travel through accelerate's object gather)."""
    if context.accelerator.num_processes == 1:
        return list(prompts)
    from accelerate.utils import gather_object

    return list(gather_object(list(prompts)))


register_algorithm("flow-grpo", FlowGRPOConfig)(PolicyGradient)
register_algorithm("ddpo", DDPOConfig)(PolicyGradient)
register_algorithm("pref-grpo", PrefGRPOConfig)(PolicyGradient)
register_algorithm("adv-grpo", AdvGRPOConfig)(PolicyGradient)
