"""`align serve-rewards --reward NAME [--reward NAME ...] [--reward-arg NAME.KEY=VALUE] [--port P]`: a
batched reward server (rewards/server.py) that training runs, evaluations, `align optimize`, `align pairs`
and galleries reach through `NAME@http://HOST:PORT` or a term's `remote:` argument."""

from __future__ import annotations

import os


def reward_terms(names: list[str], pairs: list[str]) -> list[tuple[str, dict]]:
    """[(name, args)] from --reward names and NAME.KEY=VALUE --reward-arg pairs."""
    from align.commands.rewards import parse_reward_args

    args = {name: {} for name in names}
    for pair in pairs:
        target, dot, rest = pair.partition(".")
        if not dot or target not in args:
            raise ValueError(
                f"--reward-arg {pair!r}: expected NAME.KEY=VALUE for a served reward ({', '.join(names)})"
            )
        args[target].update(parse_reward_args([rest]))
    return list(args.items())


def run(args) -> int:
    from rewards.server import build_app, build_rewards, serve
    from samplers.devices import resolve_device

    if not args.reward:
        raise ValueError("name at least one reward to serve: --reward geneval-toy (see `align rewards list`)")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (
        args.token or os.environ.get("ALIGN_REWARD_TOKEN")
    ):
        print(f"warning: serving on {args.host} without a token: anyone who reaches it can use it")
    terms = reward_terms(args.reward, args.reward_arg)
    rewards = build_rewards(terms, device=str(resolve_device(args.device)))
    from align import __version__

    describe = {
        "version": __version__,
        "rewards": {name: {"args": {k: repr(v) for k, v in a.items()}} for name, a in terms},
    }
    app = build_app(
        rewards,
        token=args.token or os.environ.get("ALIGN_REWARD_TOKEN"),
        max_batch=args.max_batch,
        wait=args.wait_ms / 1000,
        delay=args.delay,
        max_request_images=args.max_request_images,
        describe=describe,
    )
    print(
        f"serving {', '.join(rewards)} on http://{args.host}:{args.port} (batches of up to {args.max_batch})",
        flush=True,
    )
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve-rewards", help="serve rewards over HTTP, batched across clients")
    parser.add_argument("--reward", action="append", default=[], help="a reward to serve (repeatable)")
    parser.add_argument(
        "--reward-arg",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a served reward's argument",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument(
        "--token", default=None, help="shared token clients must send (or ALIGN_REWARD_TOKEN)"
    )
    parser.add_argument("--max-batch", type=int, default=64, help="images scored together at most")
    parser.add_argument(
        "--wait-ms", type=float, default=5.0, help="how long a batch waits for more requests"
    )
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds added to every batch (overlap studies)"
    )
    parser.add_argument("--max-request-images", type=int, default=1024)
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda:N")
    parser.set_defaults(run=run)
