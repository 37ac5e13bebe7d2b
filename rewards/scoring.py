"""Scoring a grid of images: per-image verifiable checks (toy-world prompts, read by the geneval
verifier) and reward values, and their summary (accuracy with its standard error, per constraint, per
prompt kind, per reward)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from rewards.geneval import CONSTRAINTS, evaluate_images
from rewards.geneval_video import VIDEO_CONSTRAINTS, evaluate_clips
from rewards.toy_video import is_video_prompt, parse_video_prompt
from rewards.toy_world import is_toy_prompt, parse_prompt


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def score_images(images: torch.Tensor, prompts: Sequence[str], rewards: dict | None = None) -> dict:
    """Per-image verifiable results (toy prompts; toy-video prompts where the images are clips
    [B, F, 3, H, W]) and reward values."""
    clips = images.ndim == 5
    toy = [i for i, p in enumerate(prompts) if (is_video_prompt(p) if clips else is_toy_prompt(p))]
    checks = [None] * len(prompts)
    if toy:
        verify = evaluate_clips if clips else evaluate_images
        for i, result in zip(toy, verify(images[toy], [prompts[i] for i in toy])):
            checks[i] = result
    values = {}
    for name, reward in (rewards or {}).items():
        values[name] = reward(images, list(prompts)).detach().cpu().tolist()
    return {"checks": checks, "rewards": values}


def standard_error(values) -> float:
    """Standard error of a mean over images (sample std / sqrt(n)); nan below two values."""
    values = np.asarray(list(values), dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def summarise(prompts: Sequence[str], seeds: Sequence[int], scored: dict) -> tuple[dict, list[dict]]:
    """(summary, per-prompt rows) from per-image results."""
    checks, rewards = scored["checks"], scored["rewards"]
    toy = [i for i, c in enumerate(checks) if c is not None]
    categories = {
        name: _mean(checks[i]["constraints"][name] for i in toy if name in checks[i]["constraints"])
        for name in dict.fromkeys(CONSTRAINTS + VIDEO_CONSTRAINTS)
    }
    kinds = defaultdict(list)
    for i in toy:
        spec = parse_prompt(prompts[i]) if is_toy_prompt(prompts[i]) else parse_video_prompt(prompts[i])
        kinds[spec.kind].append(checks[i]["all"])
    outcomes = [int(checks[i]["all"]) for i in toy]
    scores = [float(checks[i]["score"]) for i in toy]
    summary = {
        "accuracy": _mean(outcomes),
        "accuracy_se": standard_error(outcomes),
        "score": _mean(scores),
        "score_se": standard_error(scores),
        "categories": {k: v for k, v in categories.items() if not np.isnan(v)},
        "kinds": {k: _mean(v) for k, v in sorted(kinds.items())},
        "rewards": {name: _mean(values) for name, values in rewards.items()},
        "num_images": len(prompts),
        "num_prompts": len(dict.fromkeys(prompts)),
        "outcomes": outcomes,  # all constraints met, per toy image (prompt-major): for paired comparisons
        "scores": scores,  # the fraction met, per toy image (the same order)
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
