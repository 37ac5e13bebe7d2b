"""`align pretrain-toy`: build the embedded toy model from scratch (see align/toy/pretrain.py)."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("vae", "data", "diffusion", "export", "clip", "quality")


def run(args) -> int:
    from align.toy import pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = STAGES if args.stage == "all" else (args.stage,)
    for stage in stages:
        if stage == "vae":
            result = pretrain.train_vae(out, steps=args.vae_steps)
        elif stage == "data":
            result = pretrain.build_data(out, count=args.data_count)
        elif stage == "diffusion":
            result = pretrain.train_diffusion(
                out, total_steps=args.steps, stop_at=args.stop_at, minutes=args.minutes, resume=args.resume
            )
            if not result["done"]:
                print(json.dumps(result))
                print(f"stopped at step {result['step']}; continue with --stage diffusion --resume")
                return 0
        elif stage == "export":
            result = {"pipeline": str(pretrain.export(out))}
        else:
            from align.toy import reward_models

            result = reward_models.train(stage, out, steps=args.reward_steps)
        print(json.dumps({stage: result}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain-toy", help="train the toy model and toy reward models from scratch on CPU"
    )
    parser.add_argument(
        "--out", required=True, help="working directory (checkpoints, data, exported pipeline)"
    )
    parser.add_argument("--stage", default="all", choices=("all", *STAGES))
    parser.add_argument(
        "--steps", type=int, default=6000, help="length of the diffusion stage's cosine schedule (batch 64)"
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=2250,
        help="stop (and export) at this step: the shipped base is step 2,250, where relations are learned "
        "and every skill still has headroom for alignment",
    )
    parser.add_argument(
        "--minutes", type=float, default=None, help="stop the diffusion stage after this long"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the diffusion stage from its checkpoint"
    )
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument(
        "--reward-steps", type=int, default=None, help="steps of the clip/quality stages (default 3000/1500)"
    )
    parser.add_argument("--data-count", type=int, default=120_000)
    parser.set_defaults(run=run)
