"""`align optimize MODEL --prompts SPLIT_OR_FILE --reward NAME[=WEIGHT] ... --out DIR` (ReNO)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from align.commands import add_device_arguments
from align.commands.rewards import parse_named_reward_args


def parse_rewards(specs: list[str]) -> dict[str, float]:
    weights = {}
    for spec in specs:
        name, _, weight = spec.partition("=")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError as error:
            raise ValueError(f"--reward {spec!r}: the weight after '=' must be a number") from error
    if not weights:
        raise ValueError("give at least one --reward NAME[=WEIGHT] to optimise")
    return weights


METHODS = ("reno", "tree", "prune", "guidance")
RENO_KEYS = ("iterations", "lr", "regularisation", "grad_clip", "momentum", "explore", "max_disagreement", "warm_start", "no_trade", "augment", "augment_shift")
SEARCH_KEYS = ("budget", "noise_level", "sde", "window", "selection", "prune_at", "keep", "guidance")
RECIPE_KEYS = {"model", "steps", "rewards", "seconds", "method", "seeds", "eval_rewards", "reward_args", *RENO_KEYS, *SEARCH_KEYS}


def _defaults() -> dict:
    """Every default of `align optimize`, read off the settings classes (align/noise_settings.py)."""
    from align.noise_settings import OptimizeSettings, SearchSettings

    reno, search = OptimizeSettings(), SearchSettings()
    return {
        **{k: getattr(reno, k) for k in RENO_KEYS},
        **{k: getattr(search, k) for k in ("noise_level", "window", "selection", "keep", "guidance")},
        "prune_at": list(search.prune_at),
        "method": "reno",
        "seeds": 1,
        "sde": "flow-grpo",
    }


DEFAULTS = _defaults()


def is_recipe(data) -> bool:
    """A noise-optimisation recipe (`align optimize --config`) rather than a training experiment: no
    `algorithm:` section and only the keys above."""
    return isinstance(data, dict) and "algorithm" not in data and set(data) <= RECIPE_KEYS


def check_recipe(recipe: dict, path) -> None:
    """Refuse unknown keys, a missing model and unregistered or non-numeric rewards, naming the fix."""
    from plumbing.registry import did_you_mean
    from rewards.base import REWARDS

    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], RECIPE_KEYS)}")
    if not recipe.get("model"):
        raise ValueError(f"{path}: no model; give `model: NAME`")
    for name, weight in (recipe.get("rewards") or {}).items():
        REWARDS.lookup(name)
        if not isinstance(weight, (int, float)):
            raise ValueError(f"{path}: rewards.{name}: the weight must be a number, got {weight!r}")
    for key, choices in (("method", METHODS), ("selection", ("greedy", "sample"))):
        if key in recipe and recipe[key] not in choices:
            raise ValueError(f"{path}: {key}: {recipe[key]!r} is not one of {', '.join(choices)}")
    for name in recipe.get("eval_rewards") or []:
        REWARDS.lookup(name)
    named = set(recipe.get("rewards") or {}) | set(recipe.get("eval_rewards") or [])
    for name, arguments in (recipe.get("reward_args") or {}).items():
        if name not in named or not isinstance(arguments, dict):
            raise ValueError(f"{path}: reward_args.{name}: give {{key: value}} for a reward the recipe names")


def apply_recipe(args) -> None:
    """Fill unset arguments from a YAML recipe (`--config`), then from the defaults."""
    recipe = {}
    if args.config:
        import yaml

        from align.recipes import find_file

        path = find_file(args.config)
        if path is None:
            raise ValueError(
                f"--config {args.config}: no such file (nor a shipped recipe such as toy/reno-clip.yaml)"
            )
        recipe = yaml.safe_load(path.read_text()) or {}
        check_recipe(recipe, path)
    if args.model is None:
        args.model = recipe.get("model")
    if args.model is None:
        raise ValueError("give a MODEL (or a --config recipe naming one)")
    if not args.reward:
        args.reward = [f"{name}={weight}" for name, weight in (recipe.get("rewards") or {}).items()]
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, recipe.get(key, default))
    if not args.eval_reward:
        args.eval_reward = list(recipe.get("eval_rewards") or [])
    args.reward_args = {**(recipe.get("reward_args") or {})}
    for name, arguments in parse_named_reward_args(args.reward_arg).items():
        args.reward_args[name] = {**args.reward_args.get(name, {}), **arguments}
    for key in ("steps", "budget", "seconds"):  # no default: None means the model's / 21 x steps / none
        if getattr(args, key) is None:
            setattr(args, key, recipe.get(key))


def run(args) -> int:
    from align.optimize import OptimizeSettings
    from align.recipes import load_prompts
    from align.runs import load_model
    from rewards.base import build_reward
    from samplers.devices import resolve_device

    apply_recipe(args)
    device = resolve_device(args.device)
    weights = parse_rewards(args.reward)
    prompts = list(args.prompt) or load_prompts(args.prompts)
    prompts = prompts[: args.max_prompts]
    def build(name):
        return build_reward(name, device=device, **args.reward_args.get(name, {}))

    rewards = {name: build(name) for name in weights}
    stuck = [n for n, r in rewards.items() if not r.differentiable]
    if stuck and args.method in ("reno", "guidance"):
        raise ValueError(
            f"--method {args.method} follows reward gradients; {', '.join(stuck)} is not differentiable "
            "(score it with --eval-reward, or search with --method tree or prune)"
        )
    report = {name: build(name) for name in args.eval_reward if name not in rewards}
    report.update(rewards)
    adapter = load_model(args.model, device=device, dtype=args.dtype, default_steps=args.steps)
    if args.sde != "flow-grpo":
        if adapter.family != "flow":
            raise ValueError(f"--sde {args.sde} steps flow models; {args.model} samples by DDIM (drop --sde)")
        adapter.sde = args.sde
    settings = OptimizeSettings(
        **{key: getattr(args, key) for key in RENO_KEYS},
        seconds=args.seconds,
        num_steps=args.steps,
        keep_every=args.keep_every,
        weights=weights,
    )
    out = Path(args.out)
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: give 1 or more seeds per prompt")
    seeds = [index * args.seeds + k for index in range(len(prompts)) for k in range(args.seeds)]
    prompts = [prompt for prompt in prompts for _ in range(args.seeds)]
    if args.method != "reno":
        return _run_search(args, adapter, prompts, seeds, rewards, report, weights, out)
    return _run_reno(args, adapter, prompts, seeds, rewards, report, settings, out)


def _run_reno(args, adapter, prompts, seeds, rewards, report, settings, out: Path) -> int:
    """ReNO against best-of-N at equal evaluations: images, summary, curves and the table."""
    from align.optimize import compare_with_best_of_n
    from gallery.build import save_picture

    def keep(iteration, images, values):
        if iteration % settings.keep_every == 0 or iteration == settings.iterations:
            for i in range(len(images)):
                folder = out / "iterations" / f"{i:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                save_picture(images, i, folder / f"iter_{iteration:03d}")

    compared = compare_with_best_of_n(adapter, prompts, seeds, rewards, settings, report, on_iteration=keep)
    optimised, n = compared["optimised"], compared["best_of_n"]
    results = {}
    for method, images in compared["images"].items():
        results[method] = compared["summaries"][method]
        folder = out / "images" / method
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(len(images)):
            save_picture(images, i, folder / f"{i:03d}")
    results["settings"] = {
        "iterations": optimised["iterations"],
        "best_of_n": n,
        "model": args.model,
        "weights": settings.weights,
        "reward_args": args.reward_args,
        "num_prompts": len(prompts),
        **{key: getattr(settings, key) for key in ("max_disagreement", "warm_start", "no_trade", "augment")},
        "frozen": optimised.get("frozen", 0),
    }
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    (out / "curves.json").write_text(json.dumps({"prompts": prompts, "history": optimised["history"]}))
    _plot_curves(out, optimised["history"])
    print(_search_table(results, "optimized", "best_of_n", list(report)))
    print(f"wrote {out / 'summary.json'}")
    return 0


def _run_search(args, adapter, prompts, seeds, rewards, report, weights, out: Path) -> int:
    from align.search import SearchSettings, compare_with_search
    from gallery.build import save_picture
    from rewards.base import build_reward

    settings = SearchSettings(
        budget=args.budget,
        num_steps=args.steps,
        noise_level=args.noise_level,
        window=args.window,
        selection=args.selection,
        prune_at=tuple(args.prune_at),
        keep=args.keep,
        guidance=args.guidance,
        weights=weights,
    )
    prune_rewards = None
    if args.prune_reward:
        prune_rewards = {name: build_reward(name, device=adapter.device) for name in args.prune_reward}
    compared = compare_with_search(
        adapter, prompts, seeds, rewards, settings, args.method, report, prune_rewards
    )
    results = {}
    for method, images in compared["images"].items():
        results[method] = compared["summaries"][method]
        folder = out / "images" / method
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(len(images)):
            save_picture(images, i, folder / f"{i:03d}_{seeds[i]}")
    result = compared["result"]
    results["settings"] = {
        "method": args.method,
        "baseline": compared["baseline"],
        "model": args.model,
        "weights": weights,
        "num_images": len(prompts),
        "search": {k: v for k, v in settings.__dict__.items() if k != "weights"},
        "budget": settings.total(adapter),
        "best_of_n": settings.total(adapter) // settings.steps(adapter),
        **{k: result[k] for k in ("leaves", "evaluations", "plan") if k in result},
    }
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(_search_table(results, compared["method"], compared["baseline"], list(report)))
    print(f"wrote {out / 'summary.json'}")
    return 0


def _search_table(results: dict, method: str, baseline: str, names: list[str]) -> str:
    """Means per method, and the method's paired difference from its baseline with its SE."""
    toy = not math.isnan(results["base"]["accuracy"])
    header = f"{'':<12}" + "".join(f"{n:>18}" for n in names) + (f"{'accuracy':>18}" if toy else "")
    lines = [header]
    for row in ("base", baseline, method):
        summary = results[row]
        line = f"{row:<12}" + "".join(f"{summary['rewards'][n]:>18.4f}" for n in names)
        if toy:
            line += f"{summary['accuracy']:>11.3f} +-{summary['accuracy_se']:.3f}"
        lines.append(line)
    versus = results[method]["vs_baseline"]
    line = f"{'difference':<12}" + "".join(f"{versus[n][0]:>+11.4f} +-{versus[n][1]:.4f}" for n in names)
    if toy:
        line += f"{versus['accuracy'][0]:>+11.3f} +-{versus['accuracy'][1]:.3f}"
    lines.append(line + f"   ({method} - {baseline}, paired)")
    return "\n".join(lines)


def _plot_curves(out: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = list(zip(*[h["total"] for h in history]))
    figure, axis = plt.subplots(figsize=(6, 4))
    for curve in totals:
        axis.plot(curve, alpha=0.4)
    axis.plot([sum(h["total"]) / len(h["total"]) for h in history], color="black", linewidth=2, label="mean")
    axis.set_xlabel("iteration")
    axis.set_ylabel("weighted reward")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=100)
    plt.close(figure)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "optimize", help="optimise the initial noise per prompt (ReNO) vs best-of-N"
    )
    parser.add_argument("model", nargs="?", default=None, help="the model (or take it from --config)")
    parser.add_argument(
        "--config", default=None, help="a YAML recipe: model, steps, rewards {name: weight}, ..."
    )
    parser.add_argument("--prompts", default="heldout", help="a toy split or a file of prompts")
    parser.add_argument(
        "--prompt", action="append", default=[], help="a prompt (repeatable; overrides --prompts)"
    )
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument(
        "--reward", action="append", default=[], help="NAME[=WEIGHT], differentiable (repeatable)"
    )
    parser.add_argument(
        "--eval-reward", action="append", default=[], help="also report this reward (repeatable)"
    )
    parser.add_argument("--reward-arg", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="passed to that reward's constructor, e.g. proxy.path=DIR (repeatable)")
    _noise_arguments(parser)
    _search_arguments(parser)
    parser.add_argument("--out", required=True)
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def _noise_arguments(parser) -> None:
    """ReNO's: the gradient steps on the initial noise."""
    parser.add_argument("--iterations", type=int, default=None, help=f"gradient steps (default {DEFAULTS['iterations']})")
    parser.add_argument("--seconds", type=float, default=None, help="wall-clock budget")
    parser.add_argument("--lr", type=float, default=None, help=f"step size on the noise (default {DEFAULTS['lr']})")
    parser.add_argument("--regularisation", type=float, default=None, help=f"norm regulariser weight ({DEFAULTS['regularisation']})")
    parser.add_argument("--grad-clip", type=float, default=None, help=f"noise-gradient norm clip ({DEFAULTS['grad_clip']})")
    parser.add_argument("--momentum", type=float, default=None, help=f"Nesterov momentum of the noise SGD ({DEFAULTS['momentum']}; 0: plain steps)")
    parser.add_argument("--max-disagreement", type=float, default=None, help="guard: freeze an image once its proxy ensemble's member std exceeds this")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--explore", type=int, default=None, help="starting noises sharing the budget (keep best)")
    parser.add_argument("--warm-start", type=int, default=None, help="start each image from the best of K candidate noises (counted in best-of-N's budget)")
    parser.add_argument("--no-trade", action="store_const", const=True, default=None, help="guard: keep an iterate only if no reward term fell below its start")
    parser.add_argument("--augment", type=int, default=None, help="guard: average each reward over K copies of the image, K-1 of them shifted")
    parser.add_argument("--augment-shift", type=int, default=None, help=f"pixels of the guard's shifts (default {DEFAULTS['augment_shift']})")
    parser.add_argument("--keep-every", type=int, default=10)


def _search_arguments(parser) -> None:
    """The method, and the search methods' (tree, prune, guidance) own settings."""
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="reno (noise optimisation) | tree (Diffusion Tree Sampling) | prune (noise-aware pruning): "
        "each against best-of-N at equal denoiser evaluations | guidance (reward gradient in the SDE) "
        "against the plain SDE",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per prompt (images: prompts x seeds; 1)"
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="tree/prune: denoiser evaluations per image (21 x steps)"
    )
    parser.add_argument(
        "--noise-level", type=float, default=None, help=f"SDE noise of the stochastic steps ({DEFAULTS['noise_level']})"
    )
    parser.add_argument(
        "--sde",
        choices=("flow-grpo", "cps"),
        default=None,
        help="the stochastic step of flow models: Flow-GRPO's SDE, or cps (coefficients-preserving)",
    )
    parser.add_argument(
        "--window", type=int, default=None, help=f"tree/guidance: the first N steps are stochastic ({DEFAULTS['window']})"
    )
    parser.add_argument(
        "--selection", choices=("greedy", "sample"), default=None, help="tree: DTS* (greedy) | DTS (sample)"
    )
    parser.add_argument(
        "--prune-at", type=int, nargs="+", default=None, help=f"prune: rank candidates after these steps ({DEFAULTS['prune_at']})"
    )
    parser.add_argument(
        "--keep", type=float, default=None, help=f"prune: fraction kept at each pruning ({DEFAULTS['keep']})"
    )
    parser.add_argument(
        "--prune-reward", action="append", default=[], help="prune: rank noisy predictions by this reward"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"guidance: step along the reward gradient ({DEFAULTS['guidance']} noise stds)",
    )
