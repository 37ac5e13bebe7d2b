"""`align demo --out DIR`: the README's main job on the shipped toy model (`--text`: the SmolLM2 demo)."""

from __future__ import annotations

from pathlib import Path


def run(args) -> int:
    if args.text:
        from align.text.demo import run_text_demo

        if (args.device, args.dtype) != ("auto", "float32"):
            raise ValueError(
                "--device and --dtype apply to the image demo; the text demo runs where accelerate puts it"
            )

        run_text_demo(args.out, epochs=args.epochs)
        return 0
    from align.demo import run_demo

    run_demo(
        Path(args.out or "runs/demo"),
        epochs=args.epochs,
        extras=not args.grpo_only,
        device=args.device,
        dtype=args.dtype,
    )
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="align the shipped toy model on a CPU and print base vs aligned (no download)"
    )
    parser.add_argument("--out", default=None, help="a new or empty directory (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=None, help="Flow-GRPO epochs (default: the recipe's)")
    parser.add_argument(
        "--grpo-only", action="store_true", help="the two alignment runs only (Flow-GRPO, DiffusionNFT): skip ReNO, DRaFT-LV and the gallery"
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
