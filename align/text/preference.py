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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from align.algorithms.base import Algorithm, Collected, register_algorithm
from align.losses import dpo_loss, simpo_loss
from align.text.grpo import sample_and_score
from align.text.modality import TextModality
from align.text.settings import TextDPOConfig, TextOnlineDPOConfig, TextSimPOConfig


def _pad_to(ids: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(ids, (0, width - ids.shape[1]), value=value)


def pair_batch(prompt_tokens: dict, chosen: dict, rejected: dict, pad_id: int) -> dict:
    """Pairs with chosen and rejected completions padded to one width [n, T]."""
    width = max(chosen["completion_ids"].shape[1], rejected["completion_ids"].shape[1])
    tokens = dict(prompt_tokens)
    for side, side_tokens in (("chosen", chosen), ("rejected", rejected)):
        tokens[f"{side}_ids"] = _pad_to(side_tokens["completion_ids"], width, pad_id)
        tokens[f"{side}_mask"] = _pad_to(side_tokens["completion_mask"], width, 0)
    return tokens


def both_sides(tokens: dict, rows) -> dict:
    """Token dict of 2n rows: the chosen completions of `rows`, then their rejected ones."""
    prompt_ids, prompt_mask = tokens["prompt_ids"][rows], tokens["prompt_mask"][rows]
    return {
        "prompt_ids": torch.cat([prompt_ids, prompt_ids]),
        "prompt_mask": torch.cat([prompt_mask, prompt_mask]),
        "completion_ids": torch.cat([tokens["chosen_ids"][rows], tokens["rejected_ids"][rows]]),
        "completion_mask": torch.cat([tokens["chosen_mask"][rows], tokens["rejected_mask"][rows]]),
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


@dataclass
class TokenPairs(Collected):
    """Preference pairs as tokens: the prompt once, both completions padded to one width."""

    prompts: list[str] = field(default_factory=list)  # [n]
    # prompt_ids / prompt_mask [n, P], chosen_ids / chosen_mask / rejected_ids / rejected_mask [n, T]
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    reference: torch.Tensor | None = None  # [2n] the reference's sequence log-probs: chosen, then rejected


class TextPreference(Algorithm):
    """What the pair objectives share: reference log-probs at collect time, pair micro-batches and the
    sequence log-probs of both sides in one forward pass. Subclasses say where the pairs come from
    (`_pairs`) and which objective they train (`_objective`)."""

    modality = TextModality
    mean_log_probs = False  # sequence log-prob: the sum over tokens, or their mean (SimPO)
    needs_reference = True

    def __init__(self, context):
        super().__init__(context)
        settings, policy = context.settings, context.policy
        if self.needs_reference and not policy.is_lora and policy.reference_model is None:
            raise ValueError(f"{settings.name} needs a reference: train.trainable=lora (the LoRA disabled)")

    def collect(self, epoch, prompts, group_ids, seeds):
        batch = self._pairs(epoch, prompts, group_ids, seeds)
        if self.needs_reference and batch.prompts:
            sides = both_sides(batch.tokens, slice(None))
            with torch.no_grad(), self.context.accelerator.autocast():
                reference = self.context.policy.reference_log_probs(sides)
            batch.reference = sequence_log_probs(reference, sides["completion_mask"], mean=False)
        return batch

    def _pairs(self, epoch, prompts, group_ids, seeds) -> TokenPairs:
        raise NotImplementedError

    def _objective(self, chosen, rejected, batch, rows) -> tuple[torch.Tensor, dict]:
        """The loss of sequence log-probs chosen [n] and rejected [n], with its stats."""
        raise NotImplementedError

    def micro_batches(self, batch, generator):
        size = max(1, self.context.config.train.micro_batch_size // 2)  # two completions per pair
        order = torch.randperm(len(batch.prompts), generator=generator)
        return [order[i : i + size] for i in range(0, len(order), size)]

    def loss(self, batch, rows):
        sides = both_sides(batch.tokens, rows)
        with self.context.accelerator.autocast():
            log_probs = self.context.policy.token_log_probs(sides)
        sequence = sequence_log_probs(log_probs, sides["completion_mask"], mean=self.mean_log_probs)
        loss, stats = self._objective(*sequence.chunk(2), batch, rows)
        stats["preference_loss"] = float(loss.detach())
        return loss, stats


class OfflinePairs(TextPreference):
    """Pairs from a JSONL file, `count` of them per epoch by a seeded shuffle."""

    def __init__(self, context):
        super().__init__(context)
        settings = context.settings
        if not settings.pairs:
            raise ValueError(
                f"{settings.name} learns from a pairs file: set algorithm.pairs (or use text-online-dpo)"
            )
        from align.text.data import read_pairs

        self.pairs = read_pairs(settings.pairs)[: settings.max_pairs]

    def _pairs(self, epoch, prompts, group_ids, seeds):
        """`count` pairs (a batch counts completions, two per pair), drawn by a per-epoch seeded shuffle."""
        count = len(seeds) // 2
        context, policy = self.context, self.context.policy
        processes, index = context.accelerator.num_processes, context.accelerator.process_index
        order = list(range(len(self.pairs)))
        random.Random(context.config.train.seed * 9_973 + epoch).shuffle(order)
        start = (epoch * processes + index) * count
        chosen_pairs = [self.pairs[order[(start + i) % len(order)]] for i in range(count)]
        limit = context.settings.max_new_tokens
        tokens = pair_batch(
            policy.encode_prompts([p.prompt for p in chosen_pairs]),
            policy.encode_completions([p.chosen for p in chosen_pairs], limit),
            policy.encode_completions([p.rejected for p in chosen_pairs], limit),
            policy.pad_id,
        )
        return TokenPairs(stats={"pairs": count}, prompts=[p.prompt for p in chosen_pairs], tokens=tokens)


def dpo_objective(chosen, rejected, batch: TokenPairs, rows, settings) -> tuple[torch.Tensor, dict]:
    """DPO on the sequence log-ratios to the reference taken at collect time."""
    reference_chosen, reference_rejected = batch.reference[rows], batch.reference[rows + len(batch.prompts)]
    return dpo_loss(
        chosen - reference_chosen, rejected - reference_rejected, settings.beta, settings.label_smoothing
    )


class TextDPO(OfflinePairs):
    def _objective(self, chosen, rejected, batch, rows):
        return dpo_objective(chosen, rejected, batch, rows, self.context.settings)


class TextSimPO(OfflinePairs):
    mean_log_probs = True
    needs_reference = False

    def _objective(self, chosen, rejected, batch, rows):
        settings = self.context.settings
        return simpo_loss(chosen, rejected, settings.beta, settings.gamma)


class TextOnlineDPO(TextPreference):
    def __init__(self, context):
        super().__init__(context)
        if context.config.train.group_size < 2:
            raise ValueError("text-online-dpo draws pairs from groups: set train.group_size >= 2")

    @torch.no_grad()
    def _pairs(self, epoch, prompts, group_ids, seeds):
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
        stats["pairs"] = len(chosen)
        stats["pair_gap"] = float((signal[chosen] - signal[rejected]).mean()) if chosen else 0.0
        return TokenPairs(
            stats=stats,
            values=values,
            prompts=[prompts[i] for i in chosen],
            tokens=pair_batch(prompt_tokens, *sides, policy.pad_id),
        )

    def _objective(self, chosen, rejected, batch, rows):
        return dpo_objective(chosen, rejected, batch, rows, self.context.settings)


register_algorithm("text-dpo", TextDPOConfig)(TextDPO)
register_algorithm("text-simpo", TextSimPOConfig)(TextSimPO)
register_algorithm("text-online-dpo", TextOnlineDPOConfig)(TextOnlineDPO)
