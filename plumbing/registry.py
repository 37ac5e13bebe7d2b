"""A registry is a plain dict that refuses duplicates and names the alternatives on a miss.

A registry may name its catalogue: the one module that imports every built-in entry's module (and so
registers them). It is imported on the first miss or listing, by name, so that the modules that
register entries and the registry itself never import each other in a ring.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any


def did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry(dict):
    def __init__(self, kind: str, catalogue: str | None = None):
        super().__init__()
        self.kind = kind
        self.catalogue = catalogue  # module name, e.g. "rewards.catalogue"

    def load(self) -> Registry:
        """Register every built-in entry (imports the catalogue; once, as any import)."""
        if self.catalogue:
            importlib.import_module(self.catalogue)
        return self

    def __setitem__(self, name: str, value: Any) -> None:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice; pick another name")
        super().__setitem__(name, value)

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@REGISTRY.register("name")`."""

        def add(value):
            self[name] = value
            return value

        return add

    def lookup(self, name: str) -> Any:
        if name not in self:
            self.load()
        if name not in self:
            known = ", ".join(sorted(self)) or "none registered"
            raise ValueError(f"unknown {self.kind} {name!r}{did_you_mean(name, self)} (known: {known})")
        return self[name]
