"""Reward curves of training runs (RUN_DIR/metrics.jsonl) as PNG files, one per reward."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from gallery.names import safe_name


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_curves(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """{reward: {"epoch": [...], "mean": [...], "std": [...]}} from a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"run {run_dir} has no metrics.jsonl; is it a training run directory?")
    curves: dict[str, dict[str, list[float]]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = record["epoch"]
            for name, value in record.get("rewards", {}).items():
                curve = curves.setdefault(name, {"epoch": [], "mean": [], "std": []})
                curve["epoch"].append(float(epoch))
                curve["mean"].append(float(value["mean"]))
                curve["std"].append(float(value.get("std", 0.0)))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} line {number}: expected {{'epoch': n, 'rewards': {{name: {{'mean': x, 'std': y}}}}}} "
                f"({type(error).__name__}: {error})"
            ) from error
    return curves


def plot_reward_curves(runs: Mapping[str, Path], out_dir: Path, relative_to: Path) -> list[dict]:
    """One PNG per reward with every run's mean +- std against epoch; [{"reward", "image"}]."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.ticker import MaxNLocator

    curves = {name: read_curves(path) for name, path in runs.items()}
    rewards = list(dict.fromkeys(r for run in curves.values() for r in run))
    plots = []
    for index, reward in enumerate(rewards):
        figure = Figure(figsize=(5, 3.2), dpi=100, layout="constrained")
        axes = figure.add_subplot()
        for run, run_curves in curves.items():
            if reward not in run_curves:
                continue
            curve = run_curves[reward]
            low = [m - s for m, s in zip(curve["mean"], curve["std"])]
            high = [m + s for m, s in zip(curve["mean"], curve["std"])]
            (line,) = axes.plot(curve["epoch"], curve["mean"], marker="o", markersize=3, label=run)
            axes.fill_between(curve["epoch"], low, high, color=line.get_color(), alpha=0.2)
        axes.set(xlabel="epoch", ylabel=f"{reward} (mean ± std)", title=reward)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"reward-{index:02d}-{safe_name(reward, 'reward')}.png"
        figure.savefig(path)
        plots.append({"reward": reward, "image": path.relative_to(relative_to).as_posix()})
    return plots
