"""`align gallery --model NAME=MODEL ... --prompts SPLIT_OR_FILE --seeds N --reward NAME --out DIR`."""

from __future__ import annotations

import json
from pathlib import Path

from align.commands import add_device_arguments


def parse_models(specs: list[str]) -> dict[str, str]:
    """["base=toy", "grpo=runs/x", "tiny:sd3"] -> {name: model}; a bare model names itself.

    The split is at the last "=": model names and paths rarely hold one, column names may.
    """
    if not specs:
        raise ValueError("no models; give one or more --model NAME=MODEL (a model name, run or checkpoint)")
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, model = spec.rpartition("=")
        name, model = (name.strip(), model.strip()) if sep else (spec, spec)
        if not name or not model:
            raise ValueError(f"--model {spec!r}: expected NAME=MODEL, e.g. base=toy or grpo=runs/grpo")
        if name in models:
            raise ValueError(f"--model name {name!r} is given twice; give each column its own name")
        models[name] = model
    return models


def run_directory(model: str) -> Path | None:
    """The training run behind a run directory or one of its checkpoints; else None."""
    from align.runs import resolve_checkpoint

    found = resolve_checkpoint(model)
    return None if found is None else found[1].parent.parent


def shared_settings(args, runs: dict[str, Path]) -> tuple[int | None, float | None]:
    """(steps, guidance) for every column: the flags, else the first training run's own settings."""
    from align.runs import checkpoints, read_config

    steps, guidance = args.steps, args.guidance_scale
    if runs:
        run = next(iter(runs.values()))
        sampling = read_config(run).get("sampling") or {}
        info = json.loads((checkpoints(run)[-1] / "checkpoint.json").read_text())
        if steps is None:
            steps = sampling.get("eval_num_steps") or sampling.get("num_steps")
        if guidance is None:
            guidance = info.get("adapter", {}).get("guidance_scale")
    return steps, guidance


def run(args) -> int:
    from align.recipes import load_prompts
    from align.runs import load_model, run_record
    from gallery import build_gallery
    from rewards.base import build_reward
    from rewards.toy_world import is_toy_prompt
    from samplers.devices import resolve_device

    models = parse_models(args.model)
    device = resolve_device(args.device)
    prompts = load_prompts(args.prompts)[: args.max_prompts]
    names = args.reward or (["geneval-toy"] if all(is_toy_prompt(p) for p in prompts) else [])
    rewards = {name: build_reward(name, device=device) for name in names}
    runs = {name: run for name, model in models.items() if (run := run_directory(model)) is not None}
    steps, guidance = shared_settings(args, runs)
    loaders = {
        name: (lambda model=model: load_model(model, device=device, dtype=args.dtype))
        for name, model in models.items()
    }
    data = build_gallery(
        loaders,
        prompts,
        args.seeds,
        rewards,
        Path(args.out),
        runs={name: run_record(run) for name, run in runs.items()},
        num_steps=steps,
        guidance_scale=guidance,
        title=args.title,
    )
    for row in data["summary"]:
        scores = "  ".join(f"{k} {v:.4f}" for k, v in row["rewards"].items())
        print(f"{row['model']:<16} {scores}  best cells {row['wins']}")
    print(f"wrote {len(data['cells'])} images; open {Path(args.out) / 'index.html'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gallery", help="compare models on the same prompts and seeds in a static HTML gallery"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="a column: toy, tiny:<family>, a hub id, a directory, a run directory or a checkpoint (repeatable)",
    )
    parser.add_argument(
        "--prompts", default="heldout", help="a toy split (pretrain/train/heldout/novel) or a file"
    )
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt (seeds 0..N-1)")
    parser.add_argument(
        "--reward",
        action="append",
        default=[],
        help="reward to score with (repeatable; default geneval-toy for toy prompts)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps for every column (default: the first run's, else the first model's)",
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="guidance for every column (same defaults)"
    )
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--title", default="diffusion-align gallery")
    parser.add_argument(
        "--out", required=True, help="folder for index.html, gallery.json, images/ and plots/"
    )
    add_device_arguments(parser)
    parser.set_defaults(run=run)
