"""`align evaluate MODEL --prompts SPLIT_OR_FILE --seeds N --out DIR`."""

from __future__ import annotations

from pathlib import Path

from align.commands import add_device_arguments


def run(args) -> int:
    from align.evaluate import (
        evaluate,
        format_rows,
        format_summary,
        format_swap_test,
        swap_test,
        write_evaluation,
    )
    from align.recipes import load_prompts
    from align.runs import load_model
    from rewards.base import build_reward
    from samplers.devices import resolve_device

    device = resolve_device(args.device)
    prompts = load_prompts(args.prompts)[: args.max_prompts]
    rewards = {name: build_reward(name, device=device) for name in args.reward}
    adapter = load_model(
        args.model,
        device=device,
        dtype=args.dtype,
        guidance_scale=args.guidance_scale,
        default_steps=args.steps,
    )
    summary, rows, _ = evaluate(adapter, prompts, seeds=args.seeds, rewards=rewards)
    summary.update(model=args.model, prompts=args.prompts)
    print(format_rows(rows))
    print(format_summary(summary, f"{args.model} on {args.prompts} ({summary['num_images']} images)"))
    if args.swap_test:
        summary["swap_test"] = swap_test(adapter, prompts, seeds=args.seeds)
        print(format_swap_test(summary["swap_test"]))
    if args.out:
        write_evaluation(Path(args.out), summary, rows)
        print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="generate with fixed seeds, score, and summarise")
    parser.add_argument("model", help="toy, tiny:<family>, a hub id, a directory, or a run directory")
    parser.add_argument(
        "--prompts", default="heldout", help="a toy split (pretrain/train/heldout/novel) or a file"
    )
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt (seeds 0..N-1)")
    parser.add_argument("--reward", action="append", default=[], help="extra reward to report (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument(
        "--swap-test",
        action="store_true",
        help="also draw every relation prompt with its relation swapped (left/right, above/below) and "
        "report how often the placement flips: does the model listen to the relation word?",
    )
    parser.add_argument("--out", default=None, help="directory for summary.json and prompts.jsonl")
    add_device_arguments(parser)
    parser.set_defaults(run=run)
