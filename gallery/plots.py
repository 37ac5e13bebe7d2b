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


# what a training run's metrics.jsonl keeps of each evaluation (align/loop.py), and what is read back:
# per-image outcomes and scores give paired changes between evaluations (align/goodhart.py)
EVALUATED = ("accuracy", "accuracy_se", "score", "score_se", "rewards", "outcomes", "scores", "exact_outcomes", "kl", "kl_se")


def read_evaluations(run_dir: Path) -> list[dict]:
    """A run's held-out evaluations in order: the base's (epoch 0, from summary.json) and
    each metrics.jsonl record's `eval` (with the epoch's monitor flags)."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json") or {}
    rows = []
    if summary.get("base"):
        rows.append({"epoch": 0, **{k: summary["base"].get(k) for k in EVALUATED}})
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line) if line.strip() else {}
        if "eval" in record:
            rows.append({"epoch": record["epoch"], **record["eval"], "monitor_flags": record.get("monitor_flags", [])})
    return rows


def read_flagged_epochs(run_dir: Path) -> list[int]:
    """The epochs whose monitors raised a flag (every epoch's record, evaluated or not)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [r["epoch"] for r in records if r.get("monitor_flags")]


def plot_overoptimisation(runs: Mapping[str, Path], out: Path, gold: str = "accuracy") -> Path | None:
    """Gao et al.'s curves: each run's gold `accuracy` or `score` (solid, ± SE) and every reward it evaluated
    (dashed) against sqrt(KL from the base) where the run measured it (eval.kl_seeds), else the epoch.
    None when no run evaluated more than its base."""
    from matplotlib.figure import Figure

    evaluations = {name: read_evaluations(path) for name, path in runs.items()}
    evaluations = {name: rows for name, rows in evaluations.items() if len(rows) > 1}
    if not evaluations:
        return None
    by_kl = all(all(r.get("kl") is not None for r in rows) for rows in evaluations.values())
    figure = Figure(figsize=(6.4, 4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for index, (name, rows) in enumerate(evaluations.items()):
        x = [r["kl"] ** 0.5 if by_kl else r["epoch"] for r in rows]
        colour = f"C{index}"
        values = [r[gold] for r in rows]
        axes.errorbar(x, values, yerr=[r.get(f"{gold}_se") or 0 for r in rows], color=colour, marker="o",
                      markersize=3, capsize=2, label=f"{name}: gold {gold}")
        for style, reward in zip(("--", ":", "-."), rows[-1].get("rewards") or {}):
            values = [(r.get("rewards") or {}).get(reward) for r in rows]
            axes.plot(x, values, color=colour, linestyle=style, marker=".", label=f"{name}: {reward}")
    axes.set(xlabel="sqrt(KL from the base)" if by_kl else "epoch", ylabel="held-out value",
             title="gold and proxy over training")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out
