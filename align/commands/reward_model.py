"""`align reward-model train` (proxy reward models fitted to a gold reward, align/reward_model.py) and
`align reward-model best-of-n` (a proxy's inference-time over-optimisation curve, align/goodhart.py)."""

from __future__ import annotations

import json
from pathlib import Path


def train(args) -> int:
    from align.reward_model import format_manifest, train_reward_model

    manifest = train_reward_model(args)
    print(format_manifest(manifest))
    print(f"saved to {args.out}; use it as a reward: {{name: proxy, args: {{path: {args.out}}}}}")
    return 0


def best_of_n(args) -> int:
    from align.goodhart import best_of_n_curve
    from align.recipes import load_prompts
    from align.runs import load_model
    from rewards.base import build_reward

    if not args.n or min(args.n) < 1:
        raise ValueError(f"--n {args.n}: give candidate counts of 1 or more, such as --n 1 2 4 8 16")
    proxy = build_reward("proxy", path=args.proxy, **({"members": args.members} if args.members else {}))
    adapter = load_model(args.model, device="cpu", dtype="float32", default_steps=args.steps)
    prompts = load_prompts(args.prompts)[: args.max_prompts]
    rows = best_of_n_curve(adapter, prompts, args.seeds, proxy, sorted(set(args.n)))
    print(f"{'n':>4} {'sqrtKL':>7} {'gold accuracy':>15} {'gold score':>15} {'proxy':>7}")
    for row in rows:
        print(
            f"{row['n']:>4} {row['sqrt_kl']:7.3f} {row['accuracy']:8.3f} ± {row['accuracy_se']:.3f} "
            f"{row['score']:8.3f} ± {row['score_se']:.3f} {row['proxy']:7.4f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"proxy": args.proxy, "model": args.model, "rows": rows}, indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("reward-model", help="train proxy reward models on a gold reward's labels")
    commands = parser.add_subparsers(dest="reward_model_command", required=True, metavar="ACTION")
    fit = commands.add_parser(
        "train", help="label N samples of a model with a gold reward and fit K proxies (an ensemble) to them"
    )
    fit.add_argument("--out", required=True, help="new directory for manifest.json and member-k.safetensors")
    fit.add_argument("--model", default="toy", help="whose samples are labelled (a model name or a run)")
    fit.add_argument("--gold", default="geneval-toy", help="the gold reward that labels them (default: the toy's partial credit)")
    fit.add_argument("--prompts", default="train", help="prompt split or file the samples are drawn on")
    fit.add_argument("--samples", type=int, default=1024, help="labelled samples N")
    fit.add_argument("--members", type=int, default=1, help="proxies K, each fitted from its own seed")
    fit.add_argument("--seed", type=int, default=0, help="draws the samples, the split and the members' seeds")
    fit.add_argument("--validation", type=float, default=0.2, help="share of samples kept out of every fit")
    fit.add_argument("--epochs", type=int, default=60, help="passes over each member's samples")
    fit.add_argument("--lr", type=float, default=2e-3)
    fit.add_argument("--width", type=int, default=32, help="the CNN's first channel count")
    fit.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    fit.set_defaults(run=train)
    curve = commands.add_parser(
        "best-of-n", help="the gold accuracy of a proxy's best of n samples, n = 1, 2, 4, ... (the inference-time curve)"
    )
    curve.add_argument("--proxy", required=True, help="a directory of `align reward-model train`")
    curve.add_argument("--members", type=int, nargs="+", default=None, help="the members that choose (default all)")
    curve.add_argument("--model", default="toy")
    curve.add_argument("--prompts", default="heldout")
    curve.add_argument("--max-prompts", type=int, default=None)
    curve.add_argument("--seeds", type=int, default=2, help="images per prompt, each with its own candidates")
    curve.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    curve.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    curve.add_argument("--out", default=None, help="JSON file for the rows")
    curve.set_defaults(run=best_of_n)
