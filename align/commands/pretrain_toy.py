"""`align pretrain-toy`: build the embedded toy model from scratch (see align/toy/pretrain.py)."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("vae", "data", "diffusion", "export", "clip", "quality")


# per world: (stages, diffusion schedule length, stop step, VAE steps, clips or images encoded)
WORLDS = {
    "image": (STAGES, 6000, 2250, 2500, 120_000),
    "video": (STAGES[:4], 6000, 3000, 1500, 20_000),
}


def run(args) -> int:
    import torch

    from align.toy import pretrain

    out = Path(args.out)
    stages, steps, stop_at, vae_steps, count = WORLDS[args.world]
    if args.stage not in ("all", *stages):
        raise ValueError(f"--stage {args.stage}: the {args.world} world's stages are {', '.join(stages)}")
    if args.world == "video":
        from align.toy import video as world

        trainer, dtype = world.VideoDiffusionTrainer, torch.float32  # Wan keeps norms and rope in float32
        terms = {"motion_weight": args.motion_weight, "direction_weight": args.direction_weight}
    else:
        world, trainer, dtype = pretrain, pretrain.DiffusionTrainer, torch.float16
        if args.motion_weight or args.direction_weight:
            raise ValueError("--motion-weight and --direction-weight are the video world's; add --world video")
        terms = {}
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages if args.stage == "all" else (args.stage,):
        if stage == "vae":
            options = {"resume": args.resume} if args.world == "video" else {}
            result = world.train_vae(out, steps=args.vae_steps or vae_steps, **options)
        elif stage == "data":
            result = world.build_data(out, count=args.data_count or count)
        elif stage == "diffusion":
            result = pretrain.train_diffusion(
                out,
                total_steps=args.steps or steps,
                stop_at=args.stop_at or stop_at,
                minutes=args.minutes,
                resume=args.resume,
                trainer_class=trainer,
                **terms,
            )
            if not result["done"]:
                print(json.dumps(result))
                print(f"stopped at step {result['step']}; continue with --stage diffusion --resume")
                return 0
        elif stage == "export":
            result = {"pipeline": str(pretrain.export(out, dtype=dtype, trainer_class=trainer))}
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
    parser.add_argument(
        "--world",
        default="image",
        choices=tuple(WORLDS),
        help="image: the still toy world's SD3-family model; video: the toy video world's Wan-family model "
        "(align/toy/video.py; stages vae, data, diffusion, export)",
    )
    parser.add_argument("--stage", default="all", choices=("all", *STAGES))
    parser.add_argument(
        "--steps", type=int, default=None, help="length of the diffusion stage's cosine schedule (batch 64; 6000)"
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop (and export) at this step: the shipped image base is step 2,250, where relations are learned "
        "and every skill still has headroom for alignment (video: 3000)",
    )
    parser.add_argument(
        "--minutes", type=float, default=None, help="stop the diffusion stage after this long"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the diffusion stage from its checkpoint (video: the vae stage from OUT/vae too)",
    )
    parser.add_argument(
        "--motion-weight",
        type=float,
        default=0.0,
        help="video: weight of a loss on the velocity's frame-to-frame differences (the motion; 0 off)",
    )
    parser.add_argument(
        "--direction-weight",
        type=float,
        default=0.0,
        help="video: weight of a logistic loss that makes each prompt predict better than its direction swap (0 off)",
    )
    parser.add_argument("--vae-steps", type=int, default=None, help="image 2500, video 1500")
    parser.add_argument(
        "--reward-steps", type=int, default=None, help="steps of the clip/quality stages (default 3000/1500)"
    )
    parser.add_argument("--data-count", type=int, default=None, help="image 120,000 images, video 20,000 clips")
    parser.set_defaults(run=run)
