"""File names made from user text (model and reward names): safe on every file system and in URLs."""

from __future__ import annotations

import re


def safe_name(text: str, fallback: str = "item") -> str:
    """A file-name component made of [A-Za-z0-9._-] only, with no '..' (never empty)."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text)).strip("-.")[:40]
    return name or fallback
