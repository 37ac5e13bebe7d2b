"""`align plan CONFIG [overrides] [--gpus N] [--gpu-memory GB]`: the recipe's memory per GPU before it
runs (align/planner.py), each way to run it, and the way that fits."""

from __future__ import annotations


def run(args) -> int:
    from align.config import load_config
    from align.planner import format_plan, plan

    if args.gpus < 1 or args.gpu_memory <= 0:
        raise ValueError("--gpus takes a count of 1 or more and --gpu-memory a size in GiB above 0")
    config = load_config(args.config, args.overrides)
    result = plan(config, args.gpus, args.gpu_memory)
    print(format_plan(config, result, args.gpus, args.gpu_memory))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="memory per GPU of a recipe (DDP, FSDP2, offload) before it runs, and what fits"
    )
    parser.add_argument("config", help="YAML experiment file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.micro_batch_size=2")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the run will use (processes)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB of memory per GPU (default 80)")
    parser.set_defaults(run=run)
