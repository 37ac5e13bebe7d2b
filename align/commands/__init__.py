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
]


def add_commands(subparsers) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
