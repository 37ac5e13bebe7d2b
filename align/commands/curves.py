"""`align curves RUN... [--proxy NAME] [--plot FILE]`: over-optimisation curves of training runs.

Reads each run's evaluations (the base's and every `train.eval_every` one's; with `eval.kl_seeds`
their KL from the base) and prints gold accuracy, the paired change from the best evaluation before,
every evaluated reward and the monitor flags, then the run's Goodhart summary (align/goodhart.py).
"""

from __future__ import annotations

import json
from pathlib import Path


def format_curve(
    name: str, rows: list[dict], proxy: str | None, gold: str = "accuracy", flagged_epochs: list[int] | None = None
) -> str:
    from align.goodhart import curves, goodhart

    lines = [name, f"{'epoch':>5} {'sqrtKL':>7} {'accuracy':>13} {'score':>13} {gold + ' vs best':>17}  rewards  flags"]
    for point, row in zip(curves(rows, gold), rows):
        root = f"{point['sqrt_kl']:7.2f}" if point["sqrt_kl"] is not None else f"{'-':>7}"
        change = (
            f"{point['from_peak']:+.3f}±{point['from_peak_se']:.3f}" if "from_peak" in point else f"{'':>15}"
        )
        rewards = " ".join(f"{k} {v:.4f}" for k, v in (point["rewards"] or {}).items())
        flags = "; ".join(row.get("monitor_flags") or [])
        score = f"{point['score']:.3f}±{point['score_se']:.3f}" if point.get("score_se") is not None else f"{'-':>13}"
        lines.append(
            f"{point['epoch']:>5} {root} {point['accuracy']:.3f}±{point['accuracy_se']:.3f} {score} {change:>17}  "
            f"{rewards}  {flags}"
        )
    if proxy:
        summary = goodhart(rows, proxy, gold, flagged_epochs=flagged_epochs)
        lines.append("summary: " + json.dumps(summary))
    return "\n".join(lines)


def run(args) -> int:
    from gallery.plots import plot_overoptimisation, read_evaluations, read_flagged_epochs

    runs = {}
    for spec in args.runs:
        name, sep, path = spec.rpartition("=")
        name, path = (name, path) if sep else (Path(spec).name, spec)
        if not (Path(path) / "summary.json").is_file():
            raise ValueError(f"{path}: not a training run (no summary.json); give run directories of `align train`")
        runs[name] = Path(path)
    for name, path in runs.items():
        rows = read_evaluations(path)
        if args.proxy and rows and args.proxy not in (rows[-1].get("rewards") or {}):
            raise ValueError(f"--proxy {args.proxy}: run {path} evaluated no reward of that name")
        print(format_curve(name, rows, args.proxy, args.gold, read_flagged_epochs(path)))
    if args.plot:
        written = plot_overoptimisation(runs, Path(args.plot), args.gold)
        print(f"wrote {written}" if written else "no run has an evaluation past its base: nothing to plot")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "curves", help="gold and proxy rewards of training runs against their KL from the base"
    )
    parser.add_argument("runs", nargs="+", metavar="[NAME=]RUN", help="training run directories")
    parser.add_argument("--proxy", default=None, help="the optimised reward whose rise the summary reads")
    parser.add_argument("--plot", default=None, help="PNG file for the curves")
    parser.add_argument("--gold", default="accuracy", choices=("accuracy", "score"),
                        help="the gold measure the summary reads: all-met accuracy, or the partial-credit score")
    parser.set_defaults(run=run)
