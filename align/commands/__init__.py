"""Subcommands beyond `doctor` and `config`: each module exposes `register(subparsers)`."""

from __future__ import annotations

import importlib

COMMAND_MODULES = [
    "align.commands.evaluate",
    "align.commands.pretrain_toy",
    "align.commands.train",
    "align.commands.optimize",
    "align.commands.pairs",
    "align.commands.gallery",
    "align.commands.rewards",
    "align.commands.demo",
    "align.commands.serve_rewards",
    "align.commands.plan",
    "align.commands.reward_model",
    "align.commands.curves",
]


def add_commands(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)


def add_device_arguments(parser) -> None:
    """`--device` and `--dtype` as every command that loads a model spells them; samplers/devices.py
    resolves them."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="weights' precision; auto: a training run's own, else bfloat16 on a CUDA GPU (float16 "
        "where bf16 is missing) and float32 elsewhere",
    )
