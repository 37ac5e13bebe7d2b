"""`align pairs MODEL --prompts SPLIT_OR_FILE --reward NAME --out DIR`: preference pairs from a model,
labelled by a reward (best vs worst of `--samples` images per prompt), for offline DPO."""

from __future__ import annotations

from pathlib import Path

from align.commands import add_device_arguments


def run(args) -> int:
    import torch

    from align.pairs import write_pairs
    from align.recipes import load_prompts
    from align.runs import load_model
    from rewards.base import build_reward
    from samplers.devices import resolve_device

    if args.samples < 2:
        raise ValueError("--samples must be at least 2 to form a pair")
    device = resolve_device(args.device)
    prompts = load_prompts(args.prompts)[: args.max_prompts]
    adapter = load_model(args.model, device=device, dtype=args.dtype)
    reward = build_reward(args.reward, device=device)
    chosen, rejected, kept = [], [], []
    for start in range(0, len(prompts), args.batch_prompts):
        chunk = prompts[start : start + args.batch_prompts]
        flat = [p for p in chunk for _ in range(args.samples)]
        seeds = [
            args.seed + (start + i) * args.samples + j for i in range(len(chunk)) for j in range(args.samples)
        ]
        with torch.no_grad():
            images = adapter.generate(flat, seeds)
            scores = reward(images, flat).view(len(chunk), args.samples)
        images = images.view(len(chunk), args.samples, *images.shape[1:])
        for i, prompt in enumerate(chunk):
            best, worst = int(scores[i].argmax()), int(scores[i].argmin())
            if float(scores[i, best] - scores[i, worst]) > args.margin:
                chosen.append(images[i, best])
                rejected.append(images[i, worst])
                kept.append(prompt)
    if not kept:
        raise ValueError(
            f"no prompt had {args.reward} scores differing by more than {args.margin}; "
            "raise --samples or lower --margin"
        )
    path = write_pairs(
        Path(args.out), kept, torch.stack(chosen), torch.stack(rejected), f"reward:{args.reward}"
    )
    print(f"{len(kept)} pairs from {len(prompts)} prompts -> {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("pairs", help="generate reward-labelled preference pairs for offline DPO")
    parser.add_argument("model")
    parser.add_argument("--prompts", default="train")
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--reward", required=True, help="the reward that labels the pairs")
    parser.add_argument(
        "--samples", type=int, default=4, help="images per prompt; the best and worst form a pair"
    )
    parser.add_argument("--margin", type=float, default=0.0, help="minimum reward gap for a pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-prompts", type=int, default=16)
    parser.add_argument("--out", required=True)
    add_device_arguments(parser)
    parser.set_defaults(run=run)
