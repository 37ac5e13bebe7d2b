"""Greedy evaluation of a text policy on held-out prompts.

The summary has the keys the loop reads from an image evaluation: `accuracy`, `score` (the mean
combined reward of the rewards given, NaN without rewards) and `rewards` (each reward's mean), plus
`exact_accuracy`, `completion_tokens`, `num_prompts` and a few `examples`. `exact_accuracy`: the
whole answer equals a reference of its prompt. `accuracy`: where every reference is a number, the
answer's last number equals it (as math benchmarks score a final answer); otherwise the exact
accuracy. Both are NaN when the prompts have no references.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rewards.scoring import standard_error
from rewards.text.verifiable import extract_number, normalise_answer, parse_number


def eval_references(source: str):
    """References for an eval prompt source: a task split or a JSONL with answers; else None."""
    from pathlib import Path

    from rewards.text.base import References

    if Path(source).suffix == ".txt":
        return None
    if Path(source).suffix == ".jsonl":
        try:
            return References(source)
        except ValueError:  # prompts without answers: no accuracy, rewards only
            return None
    return References(source.partition(":")[0])


def judge_answers(texts: Sequence[str], targets: Sequence[Sequence[str]]) -> tuple[list[int], list[int]]:
    """(final, exact) per answer, 1 right and 0 wrong. exact: the whole answer is one of its references;
    final: where every reference is a number, the answer's last number is one of them, else exact."""
    exact = [int(normalise_answer(t) in {normalise_answer(r) for r in refs}) for t, refs in zip(texts, targets)]
    numbers = [[parse_number(r) for r in refs] for refs in targets]
    if not all(None not in row for row in numbers):
        return exact, exact
    found = [extract_number(t, "last") for t in texts]
    return [int(f in row) for f, row in zip(found, numbers)], exact


@torch.no_grad()
def generate_texts(policy, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64) -> dict:
    """Greedy completions: {"texts": [...], "tokens": [B] completion lengths}."""
    texts, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        trajectory = policy.sample(
            list(prompts[start : start + batch_size]),
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            score=False,
        )
        texts += trajectory.extra["texts"]
        lengths += trajectory.extra["completion_mask"].sum(1).tolist()
    return {"texts": texts, "tokens": lengths}


def evaluate_text(
    policy,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    references=None,
    rewards=None,
    num_examples: int = 5,
) -> dict:
    """rewards: a RewardSet (its `combine` gives `score`) or None."""
    prompts = list(prompts)
    generated = generate_texts(policy, prompts, max_new_tokens)
    texts = generated["texts"]
    summary = {"accuracy": float("nan"), "exact_accuracy": float("nan"), "score": float("nan"), "rewards": {}}
    if references is not None:
        final, exact = judge_answers(texts, references(prompts))
        # per-prompt outcomes (1 right, 0 wrong), in prompt order: what paired differences are taken over
        summary.update(outcomes=final, exact_outcomes=exact)
        for key, outcomes in (("accuracy", final), ("exact_accuracy", exact)):
            summary[key], summary[f"{key}_se"] = float(np.mean(outcomes)), standard_error(outcomes)
    if rewards is not None:
        values = rewards.score(texts, prompts)
        summary["rewards"] = {name: float(v.float().mean()) for name, v in values.items()}
        summary["score"] = float(sum(rewards.weights[name] * v.float() for name, v in values.items()).mean())
    summary.update(
        completion_tokens=float(np.mean(generated["tokens"])),
        num_prompts=len(prompts),
        examples=[{"prompt": p, "completion": t} for p, t in zip(prompts[:num_examples], texts)],
    )
    return summary


def format_text_summary(summary: dict, title: str = "") -> str:
    lines = [title] if title else []
    se = {key: summary.get(f"{key}_se", float("nan")) for key in ("accuracy", "exact_accuracy")}
    lines.append(
        f"accuracy {summary['accuracy']:.3f} +- {se['accuracy']:.3f}  exact {summary['exact_accuracy']:.3f} +- "
        f"{se['exact_accuracy']:.3f}  score {summary['score']:.3f}  "
        f"({summary['num_prompts']} prompts, {summary['completion_tokens']:.1f} tokens per answer)"
    )
    if summary["rewards"]:
        lines.append("rewards: " + "  ".join(f"{k} {v:.3f}" for k, v in summary["rewards"].items()))
    lines += [f"  {e['prompt']!r} -> {e['completion']!r}" for e in summary["examples"]]
    return "\n".join(lines)


def text_results_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table of held-out accuracies +- their SEs over prompts; rows after the first (the base)
    carry the paired change from it, +- the SE of the per-prompt differences (same prompts, greedy)."""
    from align.evaluate import paired_difference

    base = rows[0][1]
    lines = [
        f"| held-out ({base['num_prompts']} prompts, greedy) | exact answer | vs base | final number right | vs base |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, row in rows:
        cells = [label]
        for key, outcomes in (("exact_accuracy", "exact_outcomes"), ("accuracy", "outcomes")):
            cells.append(f"{row[key]:.3f} +- {row[f'{key}_se']:.3f}")
            cells.append("" if row is base else "{:+.3f} +- {:.3f}".format(*paired_difference(base, row, outcomes)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
