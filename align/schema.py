"""Typed configs: dataclasses filled from plain data, every error collected with its key path.

A field's metadata carries its bounds and choices (`param(...)`); a dataclass may define
`check(self) -> list[tuple[list[str], str]]` for cross-field rules, each naming the fields it reads
(a rule is skipped when one of them already failed on its own), and a classmethod
`upgrade(data, prefix) -> data` that rewrites the keys of an earlier release (`moved_keys`) before
the data is read.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
import warnings
from typing import Any, Literal

import yaml

from plumbing.registry import did_you_mean


class ConfigError(ValueError):
    """All problems of a config at once, one line each: `key.path: what is wrong`."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def param(default=dataclasses.MISSING, *, min=None, max=None, gt=None, choices=None, factory=None):
    """A dataclass field with bounds: min/max inclusive, gt exclusive, choices a tuple."""
    metadata = {"min": min, "max": max, "gt": gt, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _Converter:
    def __init__(self):
        self.errors: list[str] = []
        self.failed: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")
        self.failed.add(path)

    def convert(self, tp, value, path: str, metadata=None):
        metadata = metadata or {}
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return value
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                return self.convert(inner[0], value, path, metadata)
            for candidate in inner:  # first matching alternative
                probe = _Converter()
                converted = probe.convert(candidate, value, path, metadata)
                if not probe.errors:
                    return converted
            return self._wrong(path, " or ".join(_type_name(a) for a in inner), value)
        if origin is Literal:
            if value not in args:
                self.fail(
                    path, f"{value!r} is not one of {', '.join(map(repr, args))}{did_you_mean(value, args)}"
                )
            return value
        if dataclasses.is_dataclass(tp):
            return from_data(tp, value, path, self)
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                return self._wrong(path, "a list", value)
            item = args[0] if args else Any
            return [self.convert(item, v, f"{path}.{i}") for i, v in enumerate(value)]
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                return self._wrong(path, "a mapping", value)
            return dict(value)
        if tp is Any:
            return value
        converted = self._scalar(tp, value, path)
        if path not in self.failed:
            self._bounds(converted, path, metadata)
        return converted

    def _wrong(self, path, expected, value):
        self.fail(path, f"expected {expected}, got {type(value).__name__} {value!r}")
        return None

    def _scalar(self, tp, value, path):
        if tp is bool:
            return value if isinstance(value, bool) else self._wrong(path, "true or false", value)
        if tp is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            return self._wrong(path, "an integer", value)
        if tp is float:
            if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            return self._wrong(path, "a number", value)
        if tp is str:
            return value if isinstance(value, str) else self._wrong(path, "a string", value)
        raise TypeError(f"unsupported config field type {tp!r} at {path}")

    def _bounds(self, value, path, metadata):
        if value is None:
            return
        choices = metadata.get("choices")
        if choices is not None and value not in choices:
            options = ", ".join(map(str, choices))
            self.fail(path, f"{value!r} is not one of {options}{did_you_mean(value, choices)}")
            return
        low, high, above = metadata.get("min"), metadata.get("max"), metadata.get("gt")
        if low is not None and value < low:
            self.fail(path, f"{value} is below the minimum {low}")
        elif high is not None and value > high:
            self.fail(path, f"{value} is above the maximum {high}")
        elif above is not None and value <= above:
            self.fail(path, f"{value} must be greater than {above}")


def from_data(cls, data, path: str = "", converter: _Converter | None = None):
    """Build dataclass `cls` from a mapping; raises ConfigError with every problem (top level only)."""
    top = converter is None
    converter = converter or _Converter()
    prefix = f"{path}." if path else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        converter.fail(path or "<root>", f"expected a mapping, got {type(data).__name__}")
        data = {}
    if hasattr(cls, "upgrade"):
        data = cls.upgrade(copy.deepcopy(data), prefix)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            converter.fail(f"{prefix}{key}", f"unknown key{did_you_mean(key, known)}")
    values = {}
    for name, f in known.items():
        if name in data:
            values[name] = converter.convert(hints[name], data[name], f"{prefix}{name}", f.metadata)
            if f"{prefix}{name}" in converter.failed:
                del values[name]  # keep the default so the object can still be built and checked
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            converter.fail(f"{prefix}{name}", "missing required key")
    try:
        instance = cls(**values)
    except TypeError:  # a required field failed; nothing more to check here
        instance = None
    if instance is not None and hasattr(instance, "check"):
        failed = set(converter.failed)  # field errors only: one broken rule must not hide another
        for fields_read, message in instance.check():
            paths = [f"{prefix}{f}" for f in fields_read]
            if not any(p in failed or p.startswith(tuple(x + "." for x in failed)) for p in paths):
                converter.errors.append(f"{paths[0]}: {message}")
    if top and converter.errors:
        raise ConfigError(converter.errors)
    return instance


def deprecated(message: str) -> None:
    """The one-line warning of a key that an earlier release spelt otherwise, on stderr as
    `config:1: FutureWarning: ...` (no source line of ours is echoed beside it)."""
    text = f"{message}; the old spelling is read until the next release"
    warnings.warn_explicit(text, FutureWarning, filename="config", lineno=1)


def moved_keys(data: dict, moves: dict[str, str], prefix: str = "") -> dict:
    """Each `old` key of `data` moves to its dotted `new` path, with a deprecation warning naming both.
    The old key wins over a value already there: it was written on purpose (an override of an
    old-style key on a recipe that uses the new one). Returns `data`, changed in place."""
    for old, new in moves.items():
        if old not in data:
            continue
        value = data.pop(old)
        *parents, leaf = new.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
        deprecated(f"{prefix}{old} is now {prefix}{new}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` strings into nested data (values parsed as YAML; list items by index)."""
    errors = []
    for override in overrides:
        if "=" not in override:
            errors.append(f"{override}: an override takes the form key.path=value")
            continue
        key, raw = override.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    errors.append(f"{'.'.join(parts[: i + 1])}: no list item {part} to override")
                    break
                part = int(part)
            if last:
                node[part] = value
            else:
                if not isinstance(node, list) and (part not in node or node[part] is None):
                    node[part] = {}
                node = node[part]
                if not isinstance(node, (dict, list)):
                    errors.append(f"{'.'.join(parts[: i + 1])}: is a value, cannot override below it")
                    break
    if errors:
        raise ConfigError(errors)
    return data


def to_data(instance) -> dict:
    """A config object as plain data (for resolved-config files)."""
    return dataclasses.asdict(instance)
