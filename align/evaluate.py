"""Fixed-seed evaluation: generate every prompt with seeds 0..n-1, score, summarise.

The summary (`summary.json` of `align evaluate`, and the `base` / `aligned` entries of a run's
summary) is {"accuracy", "score", "categories", "kinds", "rewards", "num_images", ...}; toy-world
prompts are read by the verifiable reward, any prompt by the configured rewards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rewards.scoring import score_images, standard_error, summarise
from rewards.toy_world import parse_prompt
from samplers.grid import generate_grid


def paired_difference(base: dict, aligned: dict, key: str = "outcomes") -> tuple[float, float]:
    """(aligned - base accuracy, its standard error) over the same prompts and seeds: the SE of the
    per-image (per-prompt, for text) differences, much tighter than either accuracy's own SE because the
    samples are shared. `key` names the outcomes: "outcomes", or the text pathway's "exact_outcomes"."""
    before, after = base.get(key), aligned.get(key)
    if not before or not after or len(before) != len(after):
        raise ValueError("paired difference: both evaluations need per-image outcomes of the same grid")
    differences = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    return float(differences.mean()), standard_error(differences)


def evaluate(
    adapter, prompts: Sequence[str], seeds: int = 1, rewards: dict | None = None, num_steps: int | None = None
) -> tuple[dict, list[dict], torch.Tensor]:
    images, flat_prompts, flat_seeds = generate_grid(adapter, prompts, seeds, num_steps)
    summary, rows = summarise(flat_prompts, flat_seeds, score_images(images, flat_prompts, rewards))
    summary["num_steps"] = num_steps or adapter.default_steps
    summary["guidance_scale"] = adapter.guidance_scale
    return summary, rows, images


def score_against(images: dict, prompts, seeds, report: dict, baseline: str) -> dict:
    """Each method's images [B,3,H,W] scored by `report` on the same prompts and seeds: {method:
    summary}, every method but the baseline with "vs_baseline": the paired (difference, SE) of accuracy
    (toy prompts) and of each reward, image by image."""
    scored = {m: score_images(batch, prompts, report) for m, batch in images.items()}
    summaries = {m: summarise(prompts, seeds, s)[0] for m, s in scored.items()}
    for m in images:
        if m == baseline:
            continue
        versus = {}
        if summaries[m]["outcomes"]:
            versus["accuracy"] = paired_difference(summaries[baseline], summaries[m])
        for reward_name, values in scored[m]["rewards"].items():
            differences = [
                a - b for a, b in zip(values, scored[baseline]["rewards"][reward_name], strict=True)
            ]
            versus[reward_name] = (sum(differences) / len(differences), standard_error(differences))
        summaries[m]["vs_baseline"] = versus
    return summaries


def format_summary(summary: dict, title: str = "") -> str:
    lines = [title] if title else []
    if not np.isnan(summary.get("accuracy", float("nan"))):
        cats = "  ".join(f"{k} {v:.3f}" for k, v in summary["categories"].items())
        kinds = "  ".join(f"{k} {v:.3f}" for k, v in summary["kinds"].items())
        se = summary.get("accuracy_se", float("nan"))
        lines.append(
            f"accuracy {summary['accuracy']:.3f} +- {se:.3f}  (score {summary['score']:.3f})  | {cats}  | {kinds}"
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


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def swapped_prompt(prompt: str) -> str:
    """The same two objects with the opposite relation ("left of" <-> "right of", "above" <-> "below")."""
    from dataclasses import replace

    spec = parse_prompt(prompt)
    if spec.relation is None:
        raise ValueError(f"{prompt!r} has no relation to swap")
    return replace(spec, relation=OPPOSITE[spec.relation]).text()


def _offset_on_axis(image: np.ndarray, prompt: str) -> float | None:
    """Signed offset (px) of the second object from the first along the prompt's relation axis,
    positive when the relation holds; None when either object is not found."""
    from rewards.geneval import detect

    spec = parse_prompt(prompt)
    objects = detect(image)

    def largest(colour):
        found = [o for o in objects if o.colour == colour]
        return max(found, key=lambda o: o.area) if found else None

    first, second = largest(spec.colour), largest(spec.colour2)
    if first is None or second is None:
        return None
    dx, dy = second.cx - first.cx, second.cy - first.cy
    return {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[spec.relation]


@torch.no_grad()
def swap_test(adapter, prompts: Sequence[str], seeds: int = 2, num_steps: int | None = None) -> dict:
    """Does the model listen to the relation word? Each relation prompt and its swap ("left of" <->
    "right of", "above" <-> "below") are drawn with the same seeds (the same initial noise); a pair
    *flips* when the placement of the two objects along the relation's axis changes sign.

    Returns {"flip_fraction": flips / pairs, "flip_fraction_detected": flips / detected pairs, "pairs",
    "detected" (pairs with both objects found in both images), "pixel_difference" (mean |image -
    swapped image|), "seed_difference" (mean |image of seed s - image of seed s+1| of the same prompt:
    what a real change of placement looks like)}.
    A model that ignores the relation word flips nothing and its swapped images are near-identical.
    """
    relations = [p for p in prompts if parse_prompt(p).relation]
    if not relations:
        raise ValueError("the swap test needs relation prompts (e.g. 'a red circle left of a blue square')")
    images, flat, _ = generate_grid(adapter, relations, seeds, num_steps)
    swapped, flat_swapped, _ = generate_grid(
        adapter, [swapped_prompt(p) for p in relations], seeds, num_steps
    )
    arrays = images.float().permute(0, 2, 3, 1).cpu().numpy()
    arrays_swapped = swapped.float().permute(0, 2, 3, 1).cpu().numpy()
    flips, detected = 0, 0
    for array, array_swapped, prompt in zip(arrays, arrays_swapped, flat):
        before = _offset_on_axis(array, prompt)
        after = _offset_on_axis(array_swapped, prompt)  # measured on the original relation's axis
        if before is None or after is None:
            continue
        detected += 1
        flips += int(np.sign(before) != np.sign(after) and before != 0 and after != 0)
    return {
        "flip_fraction": flips / len(flat),
        "flip_fraction_detected": flips / detected if detected else float("nan"),
        "pairs": len(flat),
        "detected": detected,
        **grid_differences(images, swapped, seeds),
    }


def format_swap_test(result: dict) -> str:
    what, found = result.get("flips", ("placement", "both objects found in both images"))
    return (
        f"swap test: {what} flips in {result['flip_fraction']:.3f} of {result['pairs']} pairs, "
        f"{result['flip_fraction_detected']:.3f} of the {result['detected']} with {found}; "
        f"mean |image - swapped| {result['pixel_difference']:.4f}, between seeds {result['seed_difference']:.4f}"
    )


def grid_differences(images: torch.Tensor, swapped: torch.Tensor, seeds: int) -> dict:
    """What a swap changed beside what a change of seed changes: mean |image - swapped| and mean |seed s -
    seed s+1| of the same prompt, over a prompt-major grid (clips or images)."""
    by_seed = images.view(-1, seeds, *images.shape[1:])
    seed_difference = float((by_seed[:, 1:] - by_seed[:, :-1]).abs().mean()) if seeds > 1 else float("nan")
    return {"pixel_difference": float((images - swapped).abs().mean()), "seed_difference": seed_difference}
