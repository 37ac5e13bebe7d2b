"""Loading reward weights through the libraries' own loaders, with errors that say how to get them.

Nothing here downloads on its own: transformers, open_clip, timm and huggingface_hub fetch from the
hub only when allowed (HF_HUB_OFFLINE unset) and otherwise read their local cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def offline_hint(source: str) -> str:
    if Path(source).exists():
        return ""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return (
            f" (HF_HUB_OFFLINE is set and {source!r} is not in the Hugging Face cache: download it once"
            f" with `huggingface-cli download {source}`, or pass a local directory)"
        )
    return " (pass a hub id or a local directory saved with save_pretrained)"


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def from_pretrained(load: Callable, source: str, what: str):
    """`load(source)` (a `from_pretrained`), turning a missing or broken checkpoint into a ValueError."""
    try:
        return load(source)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"cannot load {what} from {source!r}: {first_line(error)}{offline_hint(source)}"
        ) from error
