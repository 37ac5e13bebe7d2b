"""Preference optimisation of a causal LM on the one loop: DPO, SimPO, online DPO.

text-dpo         offline pairs (JSONL: prompt, chosen, rejected); the image pathway's `dpo_loss` on
                 sequence log-ratios log pi(y|x) - log pi_ref(y|x) (Rafailov et al. 2023, eq. 7), the
                 reference being the LoRA disabled
text-simpo       the same pairs with `simpo_loss` on length-normalised log-likelihoods, no reference
                 (Meng et al. 2024, eq. 6)
text-online-dpo  pairs drawn from the current policy each epoch: of the `group_size` completions
                 of a prompt, the best and the worst under the rewards (as in iterative / online
                 DPO with a reward model, e.g. Xiong et al. 2024 and Guo et al. 2024); pairs whose
                 rewards differ by no more than `reward_margin` are dropped

A batch holds pairs: prompt tokens once, chosen and rejected completions padded to one width, so
a micro-batch scores both sides in a single forward pass. Reference log-probs are taken at collect
time, with no gradient.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from align.algorithms.base import Algorithm, register_algorithm
from align.losses import dpo_loss, simpo_loss
from align.schema import param
from align.text.grpo import sample_and_score
from align.text.pathway import TextPathway
from align.text.settings import TextSettings


@dataclass
class TextDPOConfig(TextSettings):
    name: str = "text-dpo"
    beta: float = param(0.1, gt=0.0)  # strength of the KL anchor to the reference: drift vs preference
    label_smoothing: float = param(0.0, min=0.0, max=0.5)  # conservative DPO: assumed label noise
    pairs: str | None = None  # JSONL of {prompt, chosen, rejected}
    max_pairs: int | None = param(None, min=1)  # use only the first N pairs of the file


@dataclass
class TextSimPOConfig(TextSettings):
    name: str = "text-simpo"
    beta: float = param(2.0, gt=0.0)  # SimPO's reward scale on mean token log-probs
    gamma: float = param(1.0, min=0.0)  # target reward margin (SimPO: gamma / beta about 0.5)
    pairs: str | None = None  # JSONL of {prompt, chosen, rejected}
    max_pairs: int | None = param(None, min=1)


@dataclass
class TextOnlineDPOConfig(TextSettings):
    name: str = "text-online-dpo"
    beta: float = param(0.1, gt=0.0)
    label_smoothing: float = param(0.0, min=0.0, max=0.5)
    reward_margin: float = param(0.0, min=0.0)  # skip pairs whose rewards differ by no more than this


def _pad_to(ids: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(ids, (0, width - ids.shape[1]), value=value)


def pair_batch(prompt_tokens: dict, chosen: dict, rejected: dict, pad_id: int) -> dict:
    """Pairs with chosen and rejected completions padded to one width [n, T]."""
    width = max(chosen["completion_ids"].shape[1], rejected["completion_ids"].shape[1])
    batch = dict(prompt_tokens)
    for side, tokens in (("chosen", chosen), ("rejected", rejected)):
        batch[f"{side}_ids"] = _pad_to(tokens["completion_ids"], width, pad_id)
        batch[f"{side}_mask"] = _pad_to(tokens["completion_mask"], width, 0)
    return batch


def both_sides(batch: dict, rows) -> dict:
    """Token dict of 2n rows: the chosen completions of `rows`, then their rejected ones."""
    prompt_ids, prompt_mask = batch["prompt_ids"][rows], batch["prompt_mask"][rows]
    return {
        "prompt_ids": torch.cat([prompt_ids, prompt_ids]),
        "prompt_mask": torch.cat([prompt_mask, prompt_mask]),
        "completion_ids": torch.cat([batch["chosen_ids"][rows], batch["rejected_ids"][rows]]),
        "completion_mask": torch.cat([batch["chosen_mask"][rows], batch["rejected_mask"][rows]]),
    }


def sequence_log_probs(log_probs: torch.Tensor, mask: torch.Tensor, mean: bool) -> torch.Tensor:
    """[B, T] token log-probs -> [B]: the sum (DPO), or the mean over counted tokens (SimPO)."""
    total = (log_probs * mask).sum(1)
    return total / mask.sum(1).clamp(min=1) if mean else total


def best_and_worst(signal: torch.Tensor, group_ids: torch.Tensor, margin: float):
    """(chosen rows, rejected rows): per group the highest and lowest signal, if they differ > margin."""
    chosen, rejected = [], []
    for group in torch.unique(group_ids):
        rows = (group_ids == group).nonzero().flatten()
        values = signal[rows]
        best, worst = rows[values.argmax()], rows[values.argmin()]
        if float(signal[best] - signal[worst]) > margin:
            chosen.append(int(best))
            rejected.append(int(worst))
    return chosen, rejected


class TextPreference(Algorithm):
    pathway = TextPathway

    def __init__(self, context):
        super().__init__(context)
        settings, policy = context.settings, context.policy
        self.online = settings.name == "text-online-dpo"
        self.simpo = settings.name == "text-simpo"
        if not self.simpo and not policy.is_lora and policy.reference_model is None:
            raise ValueError(f"{settings.name} needs a reference: train.trainable=lora (the LoRA disabled)")
        if self.online:
            if context.config.train.group_size < 2:
                raise ValueError("text-online-dpo draws pairs from groups: set train.group_size >= 2")
            return
        if not settings.pairs:
            raise ValueError(
                f"{settings.name} learns from a pairs file: set algorithm.pairs (or use text-online-dpo)"
            )
        from align.text.data import read_pairs

        self.pairs = read_pairs(settings.pairs)[: settings.max_pairs]

    def collect(self, epoch, prompts, group_ids, seeds):
        batch = (
            self._generated(prompts, group_ids, seeds)
            if self.online
            else self._offline(epoch, len(seeds) // 2)
        )
        if not self.simpo and batch["prompts"]:
            sides = both_sides(batch, slice(None))
            with torch.no_grad(), self.context.accelerator.autocast():
                reference = self.context.policy.reference_log_probs(sides)
            batch["reference"] = sequence_log_probs(reference, sides["completion_mask"], mean=False)
        return batch

    def _offline(self, epoch: int, count: int) -> dict:
        """`count` pairs (a batch counts completions, two per pair), drawn by a per-epoch seeded shuffle."""
        context, policy = self.context, self.context.policy
        processes, index = context.accelerator.num_processes, context.accelerator.process_index
        order = list(range(len(self.pairs)))
        random.Random(context.config.train.seed * 9_973 + epoch).shuffle(order)
        start = (epoch * processes + index) * count
        chosen_pairs = [self.pairs[order[(start + i) % len(order)]] for i in range(count)]
        limit = context.settings.max_new_tokens
        batch = pair_batch(
            policy.encode_prompts([p.prompt for p in chosen_pairs]),
            policy.encode_completions([p.chosen for p in chosen_pairs], limit),
            policy.encode_completions([p.rejected for p in chosen_pairs], limit),
            policy.pad_id,
        )
        batch.update(prompts=[p.prompt for p in chosen_pairs], stats={"pairs": count})
        return batch

    @torch.no_grad()
    def _generated(self, prompts, group_ids, seeds) -> dict:
        context, policy = self.context, self.context.policy
        trajectory, values, signal, stats = sample_and_score(context, prompts, group_ids, seeds, score=False)
        chosen, rejected = best_and_worst(signal, group_ids, context.settings.reward_margin)
        extra = trajectory.extra
        sides = [
            {
                "completion_ids": extra["completion_ids"][rows],
                "completion_mask": extra["completion_mask"][rows],
            }
            for rows in (chosen, rejected)
        ]
        prompt_tokens = {
            "prompt_ids": extra["prompt_ids"][chosen],
            "prompt_mask": extra["prompt_mask"][chosen],
        }
        batch = pair_batch(prompt_tokens, *sides, policy.pad_id)
        batch.update(prompts=[prompts[i] for i in chosen], values=values)
        stats["pairs"] = len(chosen)
        stats["pair_gap"] = float((signal[chosen] - signal[rejected]).mean()) if chosen else 0.0
        batch["stats"] = stats
        return batch

    def units(self, batch, generator):
        size = max(1, self.context.config.train.micro_batch_size // 2)  # two completions per pair
        order = torch.randperm(len(batch["prompts"]), generator=generator)
        return [order[i : i + size] for i in range(0, len(order), size)]

    def loss(self, batch, rows):
        context, settings = self.context, self.context.settings
        sides = both_sides(batch, rows)
        with context.accelerator.autocast():
            log_probs = context.policy.token_log_probs(sides)
        sequence = sequence_log_probs(log_probs, sides["completion_mask"], mean=self.simpo)
        chosen, rejected = sequence.chunk(2)
        if self.simpo:
            loss, stats = simpo_loss(chosen, rejected, settings.beta, settings.gamma)
        else:
            reference_chosen, reference_rejected = (
                batch["reference"][rows],
                batch["reference"][rows + len(batch["prompts"])],
            )
            loss, stats = dpo_loss(
                chosen - reference_chosen,
                rejected - reference_rejected,
                settings.beta,
                settings.label_smoothing,
            )
        stats["preference_loss"] = float(loss.detach())
        return loss, stats


register_algorithm("text-dpo", TextDPOConfig)(TextPreference)
register_algorithm("text-simpo", TextSimPOConfig)(TextPreference)
register_algorithm("text-online-dpo", TextOnlineDPOConfig)(TextPreference)
