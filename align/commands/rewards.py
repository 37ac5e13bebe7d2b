"""`align rewards list` and `align rewards score --reward NAME [--reward-arg k=v ...] --prompt P IMAGE...`."""

from __future__ import annotations


def parse_reward_args(pairs: list[str]) -> dict:
    """['k=v', ...] -> {k: v}; values read as numbers, else as YAML (booleans, lists), else strings."""
    import yaml

    args = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--reward-arg {pair!r}: expected key=value, such as k=3")
        args[key] = _scalar(value, yaml)
    return args


def parse_named_reward_args(pairs: list[str]) -> dict[str, dict]:
    """['NAME.k=v', ...] -> {NAME: {k: v}} (values as parse_reward_args reads them)."""
    named: dict[str, dict] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or not name:
            raise ValueError(f"--reward-arg {pair!r}: expected NAME.KEY=VALUE, such as proxy.path=runs/proxies/n1024")
        named.setdefault(name, {}).update(parse_reward_args([rest]))
    return named


def _scalar(value: str, yaml):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    try:
        return yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        return value


def list_rewards(args) -> int:
    from rewards.base import REWARDS

    rows = [(i.name, "yes" if i.differentiable else "no", i.weights, i.description) for i in REWARDS.load().values()]
    rows.sort()
    width = max(len(name) for name, *_ in rows)
    print(f"{'reward':<{width}}  differentiable  weights")
    for name, differentiable, weights, description in rows:
        print(f"{name:<{width}}  {differentiable:<14}  {weights}")
        print(f"{'':<{width}}  {'':<14}  {description}")
    return 0


def score_images(args) -> int:
    from rewards.base import build_reward, load_image_files

    if len(args.prompt) not in (1, len(args.images)):
        raise ValueError(
            f"give one --prompt for all images or one per image: {len(args.prompt)} prompts"
            f" for {len(args.images)} images"
        )
    prompts = args.prompt * len(args.images) if len(args.prompt) == 1 else args.prompt
    reward = build_reward(args.reward, **parse_reward_args(args.reward_arg))
    values = reward(load_image_files(args.images), prompts)
    for path, value in zip(args.images, values.tolist()):
        print(f"{value:.6g}\t{path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("rewards", help="list the rewards, or score image files with one")
    commands = parser.add_subparsers(dest="rewards_command", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="every reward, its differentiability and its weights")
    listing.set_defaults(run=list_rewards)
    score = commands.add_parser("score", help="score image files; prints `value<TAB>path` per image")
    score.add_argument("--reward", required=True, help="a reward name (see `align rewards list`)")
    score.add_argument(
        "--reward-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the reward (repeatable)",
    )
    score.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="one prompt for every image, or one per image in order",
    )
    score.add_argument("images", nargs="+", help="image files (resized to the first one's size)")
    score.set_defaults(run=score_images)
