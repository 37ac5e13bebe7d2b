"""Fixed-seed evaluation: generate every prompt with seeds 0..n-1, score, summarise.

The summary (`summary.json` of `align evaluate`, and the `base` / `aligned` entries of a run's
summary) is {"accuracy", "score", "categories", "kinds", "rewards", "num_images", ...}; toy-world
prompts are read by the verifiable reward, any prompt by the configured rewards.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from align.toy.world import is_toy_prompt, parse_prompt
from rewards.geneval import CONSTRAINTS, evaluate_images


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


@torch.no_grad()
def generate_grid(
    adapter, prompts: Sequence[str], seeds: int, num_steps: int | None = None, batch_size: int = 64
):
    """Images [P * S, 3, H, W], prompts and seeds in prompt-major order (prompt i, seed s)."""
    flat_prompts = [p for p in prompts for _ in range(seeds)]
    flat_seeds = [s for _ in prompts for s in range(seeds)]
    images = adapter.generate(flat_prompts, flat_seeds, num_steps=num_steps, batch_size=batch_size)
    return images, flat_prompts, flat_seeds


def score_images(images: torch.Tensor, prompts: Sequence[str], rewards: dict | None = None) -> dict:
    """Per-image verifiable results (toy prompts) and reward values."""
    toy = [i for i, p in enumerate(prompts) if is_toy_prompt(p)]
    checks = [None] * len(prompts)
    if toy:
        for i, result in zip(toy, evaluate_images(images[toy], [prompts[i] for i in toy])):
            checks[i] = result
    values = {}
    for name, reward in (rewards or {}).items():
        values[name] = reward(images, list(prompts)).detach().cpu().tolist()
    return {"checks": checks, "rewards": values}


def summarise(prompts: Sequence[str], seeds: Sequence[int], scored: dict) -> tuple[dict, list[dict]]:
    """(summary, per-prompt rows) from per-image results."""
    checks, rewards = scored["checks"], scored["rewards"]
    toy = [i for i, c in enumerate(checks) if c is not None]
    categories = {
        name: _mean(checks[i]["constraints"][name] for i in toy if name in checks[i]["constraints"])
        for name in CONSTRAINTS
    }
    kinds = defaultdict(list)
    for i in toy:
        kinds[parse_prompt(prompts[i]).kind].append(checks[i]["all"])
    summary = {
        "accuracy": _mean(checks[i]["all"] for i in toy),
        "score": _mean(checks[i]["score"] for i in toy),
        "categories": {k: v for k, v in categories.items() if not np.isnan(v)},
        "kinds": {k: _mean(v) for k, v in sorted(kinds.items())},
        "rewards": {name: _mean(values) for name, values in rewards.items()},
        "num_images": len(prompts),
        "num_prompts": len(dict.fromkeys(prompts)),
    }
    rows = []
    for prompt in dict.fromkeys(prompts):
        index = [i for i, p in enumerate(prompts) if p == prompt]
        row = {"prompt": prompt, "seeds": [seeds[i] for i in index]}
        if checks[index[0]] is not None:
            row["accuracy"] = _mean(checks[i]["all"] for i in index)
            row["score"] = _mean(checks[i]["score"] for i in index)
            row["constraints"] = {
                name: _mean(checks[i]["constraints"][name] for i in index)
                for name in checks[index[0]]["constraints"]
            }
        row["rewards"] = {name: _mean(values[i] for i in index) for name, values in rewards.items()}
        rows.append(row)
    return summary, rows


def evaluate(
    adapter, prompts: Sequence[str], seeds: int = 1, rewards: dict | None = None, num_steps: int | None = None
) -> tuple[dict, list[dict], torch.Tensor]:
    images, flat_prompts, flat_seeds = generate_grid(adapter, prompts, seeds, num_steps)
    summary, rows = summarise(flat_prompts, flat_seeds, score_images(images, flat_prompts, rewards))
    summary["num_steps"] = num_steps or adapter.default_steps
    summary["guidance_scale"] = adapter.guidance_scale
    return summary, rows, images


def format_summary(summary: dict, title: str = "") -> str:
    lines = [title] if title else []
    if not np.isnan(summary.get("accuracy", float("nan"))):
        cats = "  ".join(f"{k} {v:.3f}" for k, v in summary["categories"].items())
        kinds = "  ".join(f"{k} {v:.3f}" for k, v in summary["kinds"].items())
        lines.append(
            f"accuracy {summary['accuracy']:.3f}  (score {summary['score']:.3f})  | {cats}  | {kinds}"
        )
    if summary["rewards"]:
        lines.append("rewards: " + "  ".join(f"{k} {v:.4f}" for k, v in summary["rewards"].items()))
    return "\n".join(lines)


def format_rows(rows: list[dict], limit: int | None = None) -> str:
    header = f"{'prompt':<44} {'acc':>5} {'score':>5}  rewards"
    lines = [header]
    for row in rows[:limit]:
        acc = f"{row['accuracy']:.2f}" if "accuracy" in row else "  -"
        score = f"{row['score']:.2f}" if "score" in row else "  -"
        rewards = " ".join(f"{k}={v:.3f}" for k, v in row["rewards"].items())
        lines.append(f"{row['prompt'][:44]:<44} {acc:>5} {score:>5}  {rewards}")
    return "\n".join(lines)


def write_evaluation(out: Path, summary: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "prompts.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
