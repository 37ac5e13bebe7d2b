"""Policy-gradient fine-tuning of the sampler: Flow-GRPO (and its Fast / MixGRPO / Dense variants),
DDPO, Pref-GRPO and Adv-GRPO. One class, four registered names that differ only in their config's
defaults (nothing here reads the name).

Per epoch: roll out groups of samples per prompt with a stochastic sampler (align/algorithms/
stochastic.py: SDE for flow models, DDIM with eta for UNets), score them, turn rewards into advantages,
then minimise PPO's clipped surrogate on re-scored transitions (plus beta * KL to the LoRA-disabled
reference on the SDE mean, Flow-GRPO eq. 12). Only stochastic steps carry a log-prob, so only they are
trained. How rewards become advantages is data, `algorithm.advantage`, `.shaping` and `.dense`, and
each rule is a pure function (align/shaping.py, align.losses.group_advantages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.algorithms.base import (
    Rollouts,
    constraints_for,
    reference_batch,
    reference_rewards,
    register_algorithm,
)
from align.algorithms.dense import dense_advantages
from align.algorithms.policy_gradient_config import AdvGRPOConfig, DDPOConfig, FlowGRPOConfig, PrefGRPOConfig
from align.algorithms.stochastic import StochasticRollouts
from align.losses import (
    gaussian_mean_kl,
    group_advantages,
    ppo_clip_loss,
    ratio_norm_shift,
    step_gradient_weights,
)
from align.shaping import (
    batch_advantages,
    par_shape,
    pareto_front,
    pareto_rank_signal,
    tracked_advantages,
    unlikeliness_bonus,
)
from samplers.types import StepOut


class PolicyGradient(StochasticRollouts):
    def __init__(self, context):
        super().__init__(context)
        settings = context.settings
        if settings.beta > 0 and context.config.train.trainable != "lora":
            raise ValueError(
                "algorithm.beta > 0 needs train.trainable=lora (the reference is the LoRA disabled)"
            )
        if settings.advantage.signal == "win_rate" and context.config.train.group_size < 2:
            raise ValueError("signal=win_rate compares samples within a group: set train.group_size >= 2")
        self.history: dict[str, list[float]] = {}  # prompt_tracker: recent rewards per prompt
        self.constraints = constraints_for(
            context, settings.shaping.constraints, settings.shaping.constraint_lr
        )
        self.reference_rewards: dict[str, float] = {}  # PAR: the reference model's reward per prompt

    # --- collection ---------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self, epoch, prompts, group_ids, seeds):
        context, settings = self.context, self.context.settings
        sampled = self.sample(epoch, prompts, group_ids, seeds)
        values, trajectory, stochastic = sampled.values, sampled.trajectory, sampled.stochastic
        stats = {}
        for name, reward in context.rewards.trainable.items():
            real = reference_batch(settings.reference_images, prompts, epoch).to(sampled.images.device)
            stats.update({f"{name}/{k}": v for k, v in reward.update(real, sampled.images).items()})
        signal = combined = self._signal(values, group_ids)
        if settings.shaping.pareto == "rank":
            signal = pareto_rank_signal(
                torch.stack(list(values.values()), dim=1), group_ids.to(signal.device)
            )
            stats["pareto_front_fraction"] = float((signal == 0).float().mean())
        signal = self._shaped(prompts, values, signal, group_ids, trajectory, stochastic, stats)
        if settings.dense is not None:
            advantages, zero_std, dense_stats, self.noise_scales = dense_advantages(
                context, trajectory, values, group_ids, stochastic, self.noise_scales
            )
            stats.update(dense_stats)
            if settings.dense.mix > 0:  # blend in the whole trajectory's group advantage on every step
                trajectory_advantages, _ = self._advantages(prompts, signal, group_ids)
                window = torch.zeros_like(advantages)
                window[:, stochastic] = trajectory_advantages.to(advantages.device)[:, None]
                advantages = (1 - settings.dense.mix) * advantages + settings.dense.mix * window
        else:
            advantages, zero_std = self._advantages(prompts, signal, group_ids)
        if settings.shaping.pareto in ("group", "batch"):
            front = pareto_front(
                torch.stack(list(values.values()), dim=1),
                group_ids if settings.shaping.pareto == "group" else None,
            )
            advantages = advantages * front.view(-1, *([1] * (advantages.ndim - 1))).to(advantages.dtype)
            stats["pareto_front_fraction"] = float(front.float().mean())
        on_window = advantages[:, stochastic] if advantages.ndim == 2 else advantages
        stats.update(sampled.stats(signal, group_ids))
        if settings.shaping.pareto == "rank":  # the reward the ranks were taken of, not the ranks
            stats["reward"] = float(combined.mean())
        stats.update(advantage_abs_mean=float(on_window.abs().mean()), zero_std_fraction=zero_std)
        return sampled.batch(Rollouts, stats, advantages=advantages)

    def _signal(self, values, group_ids):
        rewards = self.context.rewards
        if self.context.settings.advantage.signal == "win_rate":
            from rewards.combine import group_win_rate

            return group_win_rate(rewards.combine(values), group_ids)
        return rewards.combine(values, group_ids)

    def _shaped(self, prompts, values, signal, group_ids, trajectory, stochastic, stats):
        """The constraints' Lagrangian, PAR and the unlikeliness bonus on the combined reward."""
        shaping = self.context.settings.shaping
        if self.constraints.constraints:
            stats.update({f"lambda/{k}": v for k, v in self.constraints.multipliers.items()})
            signal = self.constraints.shape(signal, values)
            self.constraints.update({name: self.context.gather(v) for name, v in values.items()})
        if shaping.par is not None:
            reference = reference_rewards(self.context, self.reference_rewards, prompts).to(signal.device)
            stats["par_reference"] = float(reference.mean())
            signal = par_shape(signal, reference, shaping.par)
        if shaping.unlikeliness > 0:
            likelihood = trajectory.log_probs[:, stochastic].sum(1).to(signal.device)
            signal = unlikeliness_bonus(
                signal,
                likelihood,
                group_ids.to(signal.device),
                shaping.unlikeliness,
                shaping.unlikeliness_success,
            )
        return signal

    def _advantages(self, prompts, signal, group_ids):
        """The rule of `algorithm.advantage` on every process's samples; this process's slice."""
        context, rule = self.context, self.context.settings.advantage
        everything = context.gather(signal)
        if rule.rule == "group":
            advantages, zero_std = group_advantages(
                everything, context.gather(group_ids), scale=rule.scale, std_over=rule.std
            )
        elif rule.rule == "batch":
            advantages, zero_std = batch_advantages(everything), 0.0
        else:
            advantages, self.history = tracked_advantages(
                self.history,
                context.gather_strings(prompts),
                everything,
                rule.tracker_buffer,
                rule.tracker_min_count,
            )
            zero_std = 0.0
        return context.local_slice(advantages), zero_std

    # --- training -----------------------------------------------------------------------------

    def micro_batches(self, batch, generator):
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
            return loss, stats | {"policy_loss": loss.detach()}
        rows, k = unit
        return self._unit_loss(batch, rows, k)

    def _unit_loss(self, batch, rows, k, graph=None):
        settings = self.context.settings
        trajectory = batch.trajectory.select(rows)
        steps = batch.steps[rows, k]
        if graph is None:
            out = self.rescore(trajectory, steps)
        else:
            at = (rows.to(steps.device), steps)
            out = StepOut(
                sample=None, mean=graph["means"][at], std=graph["stds"][at], log_prob=graph["log_probs"][at]
            )
        old = trajectory.log_probs[torch.arange(len(rows)), steps]
        scale = self.log_prob_scale(trajectory)
        advantages = batch.advantages[rows]
        if advantages.ndim == 2:  # dense: each trained step its own advantage
            advantages = advantages[torch.arange(len(rows)), steps]
        advantages = advantages.clamp(-settings.advantage.clip, settings.advantage.clip)
        if settings.guard.step_reweight:
            advantages = advantages * self._step_weights(trajectory).to(advantages.device)[steps]
        log_prob, old = out.log_prob * scale, old * scale
        raw_ratio = torch.exp(log_prob.detach() - old).mean()
        if settings.guard.ratio_norm:
            old = old + ratio_norm_shift(log_prob - old, steps)
        loss, stats = ppo_clip_loss(log_prob, old, advantages, settings.clip_range)
        stats["raw_ratio_mean"] = raw_ratio
        if settings.beta > 0:
            reference = self.reference_rescore(trajectory, steps)
            kl = gaussian_mean_kl(out.mean, reference.mean, out.std).mean()
            loss = loss + settings.beta * kl
            stats["kl"] = kl.detach()
        stats["policy_loss"] = loss.detach()
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
            "tracker": {p: list(v) for p, v in self.history.items()},
            "constraints": self.constraints.state_dict(),
            "reference_rewards": dict(self.reference_rewards),
            "noise_scales": dict(self.noise_scales),
        }

    def load_state_dict(self, state):
        self.history = {p: list(v) for p, v in state.get("tracker", {}).items()}
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


register_algorithm("flow-grpo", FlowGRPOConfig)(PolicyGradient)
register_algorithm("ddpo", DDPOConfig)(PolicyGradient)
register_algorithm("pref-grpo", PrefGRPOConfig)(PolicyGradient)
register_algorithm("adv-grpo", AdvGRPOConfig)(PolicyGradient)
