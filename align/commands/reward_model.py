"""`align reward-model train`: proxy reward models fitted to a gold reward (align/reward_model.py)."""

from __future__ import annotations


def train(args) -> int:
    from align.reward_model import format_manifest, train_reward_model

    manifest = train_reward_model(args)
    print(format_manifest(manifest))
    print(f"saved to {args.out}; use it as a reward: {{name: proxy, args: {{path: {args.out}}}}}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("reward-model", help="train proxy reward models on a gold reward's labels")
    commands = parser.add_subparsers(dest="reward_model_command", required=True, metavar="ACTION")
    fit = commands.add_parser(
        "train", help="label N samples of a model with a gold reward and fit K proxies (an ensemble) to them"
    )
    fit.add_argument("--out", required=True, help="new directory for manifest.json and member-k.safetensors")
    fit.add_argument("--model", default="toy", help="whose samples are labelled (a model name or a run)")
    fit.add_argument("--gold", default="geneval-toy", help="the gold reward that labels them")
    fit.add_argument("--prompts", default="train", help="prompt split or file the samples are drawn on")
    fit.add_argument("--samples", type=int, default=1024, help="labelled samples N")
    fit.add_argument("--members", type=int, default=1, help="proxies K, each on its own seed and resample")
    fit.add_argument("--seed", type=int, default=0, help="draws the samples, the split and the members' seeds")
    fit.add_argument("--validation", type=float, default=0.2, help="share of samples kept out of every fit")
    fit.add_argument("--epochs", type=int, default=60, help="passes over each member's samples")
    fit.add_argument("--lr", type=float, default=2e-3)
    fit.add_argument("--width", type=int, default=32, help="the CNN's first channel count")
    fit.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    fit.set_defaults(run=train)
