"""Build a comparison gallery: every model on the same prompts, seeds, steps and guidance.

OUT/
  index.html     the page (opens from disk: data, script and style are inline)
  gallery.json   every prompt, seed, model, config and score, per-model summary rows, runs, plots
  images/<column>/<prompt>-s<seed>.png   (a video model's clips: .gif, looping at 8 frames a second)
  plots/reward-<name>.png   reward curves of the runs (from their metrics.jsonl)
  plots/overoptimisation.png  gold accuracy and the other evaluated rewards against sqrt(KL from the
                 base), where a run evaluated during training (train.eval_every)

File names are built from indices and sanitised names only; prompts and model names live in
gallery.json and reach the page as text, never as markup.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from gallery.names import safe_name
from gallery.page import write_page
from gallery.plots import plot_overoptimisation, plot_reward_curves, read_json
from rewards.base import to_pil
from rewards.scoring import score_images, summarise
from rewards.toy_video import is_video_prompt, parse_video_prompt
from rewards.toy_world import is_toy_prompt, parse_prompt
from samplers.grid import generate_grid

FORMAT = "diffusion-align gallery"
VERSION = 1
GALLERY_FILES = ("index.html", "gallery.json", "images", "plots")  # all a gallery writes


def prompt_category(prompt: str) -> str:
    """The toy grammar's kind (single / relation; the toy video grammar's too), or `other` for free text."""
    if is_toy_prompt(prompt):
        return parse_prompt(prompt).kind
    return parse_video_prompt(prompt).kind if is_video_prompt(prompt) else "other"


CLIP_FRAME_MS = 125  # a clip's frames in the gallery: 8 a second, looping


def save_picture(images, index: int, path_stem: Path) -> str:
    """Image `index` of a batch as PNG, or clip `index` of clips [B, F, 3, H, W] as a looping animated GIF
    (every browser plays it in an <img>); the file's suffix."""
    if images.ndim == 5:
        frames = to_pil(images[index])
        frames[0].save(
            path_stem.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=CLIP_FRAME_MS, loop=0
        )
        return ".gif"
    to_pil(images[index : index + 1])[0].save(path_stem.with_suffix(".png"))
    return ".png"


def mark_best(cells: list[dict], reward: str | None) -> None:
    """Set cell["best"] per (prompt, seed) row: the cells holding the row's highest `reward`.

    A row whose cells all tie marks none: nothing there is better than anything else.
    """
    rows: dict[tuple, list[dict]] = {}
    for cell in cells:
        cell["best"] = False
        rows.setdefault((cell["prompt"], cell["seed"]), []).append(cell)
    if reward is None:
        return
    for row in rows.values():
        values = [cell["scores"][reward] for cell in row]
        if len(row) < 2 or max(values) == min(values):
            continue
        for cell, value in zip(row, values):
            cell["best"] = value == max(values)


def _prepare_out(out: Path) -> None:
    """Make `out` ready: new, empty, or an earlier gallery (whose images and plots are replaced)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"gallery output {out} is a file; give a folder path")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in GALLERY_FILES)
        if foreign:
            raise ValueError(
                f"{out} holds files that are not a gallery's ({', '.join(foreign[:3])}); "
                "give a new or empty folder"
            )
        for name in ("images", "plots"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _check_inputs(models: Mapping, prompts: Sequence[str], seeds: int, rewards: Mapping) -> None:
    if not models:
        raise ValueError("no models to compare; give at least one (name -> adapter)")
    if not prompts:
        raise ValueError("no prompts; give at least one")
    if len(set(prompts)) != len(prompts):
        raise ValueError("prompts repeat; give each prompt once (seeds make the repeats)")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if not isinstance(rewards, Mapping):
        raise ValueError("rewards must be a dict {name: reward}")


def generate_column(
    adapter, prompts, seeds: int, *, num_steps: int, guidance_scale: float, batch_size: int = 16
):
    """(images [P*S,3,H,W], flat prompts, flat seeds) at the gallery's steps and guidance."""
    saved = adapter.guidance_scale
    adapter.guidance_scale = guidance_scale
    try:
        return generate_grid(adapter, prompts, seeds, num_steps, batch_size=batch_size)
    finally:
        adapter.guidance_scale = saved


def write_column(
    adapter, name: str, prompts: list[str], seeds: int, rewards: Mapping, out: Path, folder: str, **settings
) -> tuple[list[dict], dict]:
    """Generate one model's images into out/folder and score them: (cells, summary)."""
    images, flat_prompts, flat_seeds = generate_column(adapter, prompts, seeds, **settings)
    scored = score_images(images, flat_prompts, rewards)
    summary, _ = summarise(flat_prompts, flat_seeds, scored)
    (out / folder).mkdir(parents=True, exist_ok=True)
    cells = []
    for i in range(len(images)):
        prompt = i // seeds  # generate_grid is prompt-major
        stem = f"{folder}/{prompt:04d}-s{flat_seeds[i]}"
        image = stem + save_picture(images, i, out / stem)
        cells.append(
            {
                "prompt": prompt,
                "seed": flat_seeds[i],
                "model": name,
                "image": image,
                "scores": {r: values[i] for r, values in scored["rewards"].items()},
                "checks": scored["checks"][i],
            }
        )
    return cells, summary


def run_entry(name: str, run: Mapping) -> dict:
    """A training run as the page shows it: its latest checkpoint and its base / aligned summary."""
    path = Path(run["path"])
    return {
        "name": name,
        "path": str(path),
        "checkpoint": run.get("checkpoint"),
        "summary": read_json(path / "summary.json"),
    }


def _jsonable(value):
    """Numbers and containers as plain JSON (NaN -> null, numpy/bool scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_gallery(
    models: Mapping[str, object],
    prompts: Sequence[str],
    seeds: int,
    rewards: Mapping[str, Callable],
    out: str | Path,
    *,
    runs: Mapping[str, Mapping] | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    title: str = "diffusion-align gallery",
    batch_size: int = 16,
) -> dict:
    """Generate, score and write a gallery; returns what gallery.json holds.

    models: column name -> adapter, or -> a zero-argument function returning one (loaded when its
        column is generated and released after, so large models need not share memory).
    seeds: images per prompt, seeds 0..seeds-1 (seed s drives the same noise in every column).
    rewards: name -> reward(images, prompts) -> [B]; the first one marks each row's best cell.
    runs: name -> {"path": a training run directory, "checkpoint": its latest checkpoint's name or None}
        (align.runs.run_record), for reward curves (metrics.jsonl) and run summaries.
    num_steps, guidance_scale: shared by every column; None takes the first column's defaults.
    """
    out = Path(out)
    _check_inputs(models, prompts, seeds, rewards)
    _prepare_out(out)
    prompts = list(prompts)
    cells, columns, summary_rows = [], [], []
    for column, (name, model) in enumerate(models.items()):
        adapter = model if hasattr(model, "generate") else model()
        if column == 0:
            num_steps = num_steps or adapter.default_steps
            guidance_scale = adapter.guidance_scale if guidance_scale is None else float(guidance_scale)
        folder = f"images/{column:02d}-{safe_name(name, 'model')}"
        settings = {"num_steps": num_steps, "guidance_scale": guidance_scale, "batch_size": batch_size}
        column_cells, summary = write_column(adapter, name, prompts, seeds, rewards, out, folder, **settings)
        cells += column_cells
        config = {**adapter.describe(), "num_steps": num_steps, "guidance_scale": guidance_scale}
        columns.append({"name": name, "folder": folder, "config": config})
        summary_rows.append({"model": name, **summary})
        del adapter  # a column loaded by a function is released before the next one loads
    first_reward = next(iter(rewards), None)
    mark_best(cells, first_reward)
    for row in summary_rows:
        row["wins"] = sum(c["best"] for c in cells if c["model"] == row["model"])
    runs = dict(runs or {})
    run_paths = {name: Path(run["path"]) for name, run in runs.items()}
    data = {
        "format": FORMAT,
        "version": VERSION,
        "title": title,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "root": str(out.resolve()),
        "settings": {"seeds": list(range(seeds)), "num_steps": num_steps, "guidance_scale": guidance_scale},
        "rewards": list(rewards),
        "best_by": first_reward,
        "prompts": [{"text": p, "category": prompt_category(p)} for p in prompts],
        "models": columns,
        "summary": summary_rows,
        "cells": cells,
        "runs": [run_entry(name, run) for name, run in runs.items()],
        "plots": plot_reward_curves(run_paths, out / "plots", relative_to=out),
    }
    overoptimisation = plot_overoptimisation(run_paths, out / "plots" / "overoptimisation.png")
    if overoptimisation is not None:
        data["plots"].append({"reward": "gold and proxy", "image": overoptimisation.relative_to(out).as_posix()})
    data = _jsonable(data)
    (out / "gallery.json").write_text(json.dumps(data, indent=1, allow_nan=False))
    write_page(data, out / "index.html")
    return data
