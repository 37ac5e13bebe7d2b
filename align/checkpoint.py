"""Checkpoint files without pickle: tensors in safetensors, everything else in JSON.

Nested state (module and optimizer state dicts, RNG states, counters) is flattened into dotted keys;
`save_state` and `load_state` round-trip it exactly. Directories are written atomically: into a
temporary sibling first, flushed to the disk, renamed into place only when complete. A manifest of
every file's size and SHA-256, written last, lets a reader refuse a checkpoint that was damaged later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"  # a dict whose keys JSON would turn into strings (optimizer state keys by int)
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete or damaged; never loaded."""


def _flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor], seen: dict | None = None) -> Any:
    """`value` as JSON-able structure, its tensors moved into `tensors` by dotted key. A tensor met
    twice (bitsandbytes shares one quantisation map between every parameter's state) is stored once
    and referred to twice, so it loads shared again; other views of one storage are copied apart
    (safetensors refuses tensors that share memory). `seen`: storage -> {view: key}."""
    seen = {} if seen is None else seen
    if isinstance(value, torch.Tensor):
        value, key = value.detach(), prefix or "_"
        views = seen.setdefault(value.untyped_storage().data_ptr(), {}) if value.numel() else {}
        view = (value.storage_offset(), tuple(value.shape), tuple(value.stride()), value.dtype)
        if view in views:
            return {_TENSOR: views[view]}
        tensor = value.cpu().contiguous()
        tensors[key] = tensor.clone() if views else tensor  # another view of a storage already stored
        views[view] = key
        return {_TENSOR: key}
    if isinstance(value, dict):
        flat = {
            k: _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors, seen) for k, v in value.items()
        }
        if all(isinstance(k, str) and k not in _MARKERS for k in flat):
            return flat
        odd = [k for k in flat if not (k is None or isinstance(k, (str, int, float)))]
        if odd:
            raise TypeError(f"cannot checkpoint a dict key of type {type(odd[0]).__name__} at {prefix!r}")
        return {_ITEMS: [[k, v] for k, v in flat.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_flatten(v, f"{prefix}.{i}", tensors, seen) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{prefix}.{i}", tensors, seen) for i, v in enumerate(value)]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {prefix!r}")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(_unflatten(v, tensors) for v in value[_TUPLE])
        if _ITEMS in value:
            return {k: _unflatten(v, tensors) for k, v in value[_ITEMS]}
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def save_state(directory: str | Path, state: dict[str, Any], name: str = "state") -> None:
    """Write `state` as `name.safetensors` + `name.json` inside an existing directory."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, "", tensors)
    directory = Path(directory)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(structure))


def load_state(directory: str | Path, name: str = "state") -> dict[str, Any]:
    directory = Path(directory)
    tensors = load_file(str(directory / f"{name}.safetensors"))
    structure = json.loads((directory / f"{name}.json").read_text())
    return _unflatten(structure, tensors)


@contextlib.contextmanager
def atomic_directory(target: str | Path):
    """Yield a temporary directory; on success it replaces `target` (no half-written checkpoint)."""
    staging = staging_directory(target)
    try:
        yield staging
        commit_directory(staging, Path(target))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def staging_directory(target: str | Path) -> Path:
    """A fresh hidden directory beside `target` to write it in (see `commit_directory`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def commit_directory(staging: Path, target: Path) -> None:
    """Make the fully written `staging` the `target` directory in one rename (the old one, if any,
    moved aside first and removed after)."""
    _sync(staging)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    _sync_entry(target.parent)


def _sync(root: Path) -> None:
    """fsync every file and directory under `root`: after a power loss, a renamed checkpoint must not
    turn out to hold empty files (the rename can reach the disk before the data does)."""
    for path in [*sorted(root.rglob("*")), root]:
        _sync_entry(path)


def _sync_entry(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def remove_staging(parent: Path) -> None:
    """Delete what a killed `atomic_directory` left in `parent` (hidden `.name.*` directories). Call it
    only while no other process writes there (the run's lock)."""
    for path in Path(parent).glob(".*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace a small file whole: a kill leaves the old text or the new, never half of one."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


# --- manifests --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record each file's size and SHA-256 in `directory/manifest.json`; call it after every other
    file is written."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def verify_checkpoint(directory: Path) -> Path:
    """`directory` if every file its manifest lists is there with its size and SHA-256; otherwise a
    one-line CheckpointError naming the checkpoint and the file."""
    directory = Path(directory)
    advice = "delete it to continue from an earlier checkpoint"
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        problem = f"has no {MANIFEST} (incomplete, or not written by align train)"
        raise CheckpointError(f"checkpoint {directory} {problem}; {advice}") from None
    except ValueError:
        problem = f"is corrupt: {MANIFEST} is not valid JSON"
        raise CheckpointError(f"checkpoint {directory} {problem}; {advice}") from None
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} is missing; {advice}")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {directory} is corrupt: {name} has {size} bytes, {expected['bytes']} were "
                f"written (truncated?); {advice}"
            )
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} fails its checksum; {advice}")
    return directory


# --- checks on what is saved ------------------------------------------------------------------------


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every tensor and number in nested dicts, lists and tuples."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}.{index}")
    else:
        yield prefix, value


def nonfinite_values(state: Any) -> list[str]:
    """Dotted keys of the floats and floating-point tensors in `state` that hold a NaN or an inf."""
    bad = []
    for key, value in _leaves(state):
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(key)
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(key)
    return bad


def tensor_bytes(state: Any) -> int:
    return sum(v.numel() * v.element_size() for _, v in _leaves(state) if isinstance(v, torch.Tensor))


def rng_state() -> dict[str, Any]:
    """Every random stream a run draws from (torch, python, numpy's legacy global)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
