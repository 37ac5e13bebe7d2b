"""`align demo --out DIR`: the README's main job on the shipped toy model (`--text`: the SmolLM2 demo), the
one entry point of both demos (align/demo.py, align/text/demo.py). They stay out of the modality
objects: the algorithms import those, and a demo trains through the loop, which imports the algorithms."""

from __future__ import annotations

from pathlib import Path


def run(args) -> int:
    if args.text:
        if (args.device, args.dtype, args.grpo_only) != ("auto", "float32", False):
            raise ValueError(
                "--device, --dtype and --grpo-only apply to the image demo; the text demo is one GRPO run, "
                "where accelerate puts it"
            )
        from align.text.demo import run_text_demo

        run_text_demo(args.out, epochs=args.epochs)
    else:
        from align.demo import run_demo

        out = Path(args.out or "runs/demo")
        run_demo(out, epochs=args.epochs, extras=not args.grpo_only, device=args.device, dtype=args.dtype)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="align the shipped toy model on a CPU and print base vs aligned (no download)"
    )
    parser.add_argument("--out", default=None, help="a new or empty directory (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=None, help="Flow-GRPO epochs (default: the recipe's)")
    parser.add_argument(
        "--grpo-only",
        action="store_true",
        help="the two alignment runs only (Flow-GRPO, DiffusionNFT): skip ReNO, DRaFT-LV and the gallery",
    )
    parser.add_argument("--text", action="store_true", help="the text demo: GRPO on SmolLM2-135M-Instruct")
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where every step runs (auto: CUDA, then MPS, then the CPU)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="the toy model's weights",
    )
    parser.set_defaults(run=run)
