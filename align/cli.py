"""The `align` command line. Heavy imports happen inside each command, so `align --help` is instant.

Bad input (a malformed config, an unknown model, a missing file) prints one line per problem
prefixed `error:` and exits with code 2, before anything is written. A run that cannot go on (disk
full, NaN steps in a row, a run directory in use, a damaged checkpoint) does the same.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for; printed as `error: ...` with exit code 2."""


def _doctor(args) -> int:
    from align.doctor import format_table, run_checks
    from align.runs import load_model

    adapter = load_model(
        args.model, family=args.family, dtype=args.dtype, device=args.device, attention=args.attention
    )
    checks = run_checks(adapter, num_steps=args.steps, noise_level=args.noise_level)
    where = f"{adapter.device}, {adapter.describe()['dtype']}, attention {adapter.attention}"
    print(format_table(f"{args.model} ({where})", checks))
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    return 1 if failed else 0


def _config_check(args) -> int:
    import yaml

    from align.commands.optimize import check_recipe, is_recipe
    from align.config import config_to_data, load_config, read_config_file

    data = read_config_file(args.config)
    if is_recipe(data) and not args.overrides:  # a noise-optimisation recipe, for `align optimize --config`
        check_recipe(data, args.config)
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
        return 0
    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_data(config), sort_keys=False).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from align.commands import add_commands, add_device_arguments

    parser = argparse.ArgumentParser(prog="align", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = commands.add_parser(
        "doctor", help="check sampler invariants of a model (pipeline equality, ratio 1, ...)"
    )
    doctor.add_argument("model", help="tiny:<family>, toy, a hub id or a local diffusers directory")
    doctor.add_argument("--steps", type=int, default=None, help="denoising steps (default: the family's)")
    doctor.add_argument(
        "--noise-level", type=float, default=None, help="SDE noise / DDIM eta for the ratio check"
    )
    doctor.add_argument("--family", default="auto", help="force an adapter family")
    doctor.add_argument(
        "--attention", default="sdpa", choices=("sdpa", "xformers"), help="xformers: only where it runs"
    )
    add_device_arguments(doctor)
    doctor.set_defaults(run=_doctor)

    config = commands.add_parser(
        "config", help="validate an experiment file (or an `align optimize` recipe) and print it resolved"
    )
    config.add_argument("config", help="YAML experiment file, or a shipped recipe such as toy/grpo-demo.yaml")
    config.add_argument("overrides", nargs="*", help="dotted overrides such as train.lr=3e-4")
    config.set_defaults(run=_config_check)

    add_commands(commands)
    return parser


def load_plugins(spec: str | None) -> None:
    """Import the comma-separated modules of ALIGN_PLUGINS, so that rewards and algorithms a user
    registers in their own code exist in every process `accelerate launch` starts."""
    import importlib

    for name in filter(None, (part.strip() for part in (spec or "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UsageError(
                f"ALIGN_PLUGINS: cannot import {name!r} ({error}); fix the module name or PYTHONPATH"
            ) from None


def quiet_optional_kernels() -> None:
    """bitsandbytes (the `cuda` extra), imported by peft wherever it is installed, warns twice on every
    import that it cannot fetch 4-bit CPU kernels from the hub; align never runs 4-bit layers."""
    import logging

    for name in ("bitsandbytes", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    from align.faults import RunFault
    from align.schema import ConfigError

    quiet_optional_kernels()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load_plugins(os.environ.get("ALIGN_PLUGINS"))
        return args.run(args)
    except ConfigError as error:
        for line in error.errors:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, RunFault, ValueError, FileNotFoundError, ImportError, ConnectionError) as error:
        if os.environ.get("ALIGN_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
