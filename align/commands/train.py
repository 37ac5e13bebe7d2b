"""`align train CONFIG [overrides] --out RUN_DIR [--resume [RUN_DIR_OR_CHECKPOINT]]`."""

from __future__ import annotations

import json
from pathlib import Path


def run(args) -> int:
    from align.algorithms.base import ALGORITHMS
    from align.config import load_config
    from align.loop import make_accelerator, train

    config = load_config(args.config, args.overrides)  # every config error before anything is written
    accelerator = make_accelerator(config.train.mixed_precision, device=args.device)
    resume = args.out if args.resume == "latest" else args.resume
    summary = train(config, args.out, resume=resume, stop_after=args.stop_after, accelerator=accelerator)
    format_summary = ALGORITHMS.lookup(config.algorithm.name).modality.format_summary
    for key in ("base", "aligned"):
        if key in summary:
            print(format_summary(summary[key], f"{key} (epoch {summary[key].get('epoch', 0)})"))
    if "stopped" in summary:  # monitor.stop ended the run at a flag
        print(f"stopped at epoch {summary['stopped']['epoch']}: {'; '.join(summary['stopped']['flags'])}")
    print(f"run directory: {args.out}")
    print(json.dumps({k: summary[k].get("accuracy") for k in ("base", "aligned") if k in summary}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model with an algorithm from a config file")
    parser.add_argument("config", help="YAML experiment file (configs/<model>/<algorithm>-<reward>.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.lr=3e-4")
    parser.add_argument("--out", required=True, type=Path, help="run directory (must be new unless --resume)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue exactly: a run directory or checkpoint (default: --out's latest)",
    )
    parser.add_argument(
        "--stop-after", type=int, default=None, help="leave after N epochs (with a checkpoint)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="auto: where accelerate puts it (CUDA, then MPS, then the CPU); cpu keeps it off a GPU. "
        "The precision is the config's model.dtype (override it: model.dtype=bfloat16)",
    )
    parser.set_defaults(run=run)
