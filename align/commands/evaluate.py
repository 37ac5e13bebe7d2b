"""`align evaluate MODEL --prompts SPLIT_OR_FILE --out DIR`: an image model (fixed seeds, the toy
verifier) or a text model (greedy answers, accuracy against the task's references); the model's
modality (align/modality.py, align/text/modality.py) does the work."""

from __future__ import annotations

import json
from pathlib import Path

from align.commands import add_device_arguments


def run(args) -> int:
    modality_of(args.model, args.prompts, args.modality).evaluate_model(args)
    if args.out:
        print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


TEXT_MODELS = ("smollm2", "tiny:llama")  # the text model names that are not hub ids or directories


def modality_of(model: str, prompts: str | None = None, choice: str = "auto"):
    """The modality class of a model named on the command line (`align evaluate`): `choice` when it
    is `image` or `text`; else a run's (or checkpoint's) algorithm decides, then the name (smollm2,
    tiny:llama; a directory whose config.json is a causal LM), then the prompts (a text task split such
    as arithmetic:heldout); anything else is an image model."""
    from align.modality import ImageModality
    from align.text.modality import TextModality

    if choice != "auto":
        return {"image": ImageModality, "text": TextModality}[choice]
    from align.runs import is_run

    path = Path(model)
    for run_dir in (path, path.parent.parent):  # a run, or one of its checkpoints
        if is_run(run_dir):
            from align.algorithms.base import ALGORITHMS
            from align.runs import read_config

            name = (read_config(run_dir).get("algorithm") or {}).get("name", "flow-grpo")
            return ALGORITHMS.lookup(name).modality
    if model in TEXT_MODELS or (path / "tokenizer_config.json").is_file():
        return TextModality
    if (path / "config.json").is_file():
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
        if any(a.endswith("ForCausalLM") for a in architectures):
            return TextModality
    if prompts and ":" in prompts and not Path(prompts).suffix:
        return TextModality
    return ImageModality


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="generate with fixed seeds (text: greedily), score, and summarise"
    )
    parser.add_argument(
        "model", help="toy, tiny:<family>, smollm2, tiny:llama, a hub id, a directory, or a run directory"
    )
    parser.add_argument(
        "--prompts",
        default="heldout",
        help="a toy split (pretrain/train/heldout/novel), a text task split (arithmetic:heldout) or a file",
    )
    parser.add_argument(
        "--modality",
        default="auto",
        choices=("auto", "image", "text"),
        help="auto: a run's algorithm, else the model's name or config, else the prompts decide",
    )
    parser.add_argument("--seeds", type=int, default=4, help="images: samples per prompt (seeds 0..N-1)")
    parser.add_argument("--reward", action="append", default=[], help="extra reward to report (repeatable)")
    parser.add_argument(
        "--steps", type=int, default=None, help="images: sampling steps (default: the model's)"
    )
    parser.add_argument("--guidance-scale", type=float, default=None, help="images")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="text: answer budget (default: the run's, else 32)"
    )
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument(
        "--swap-test",
        action="store_true",
        help="images: also draw every relation prompt with its relation swapped (left/right, above/below) "
        "and report how often the placement flips: does the model listen to the relation word?",
    )
    parser.add_argument("--out", default=None, help="directory for summary.json (images: and prompts.jsonl)")
    add_device_arguments(parser)
    parser.set_defaults(run=run)
