"""index.html: one self-contained file (inline data, script and style) that opens from disk.

The data travels as JSON inside <script type="application/json">, with <, >, & and the JS line
separators written as \\u escapes, so no prompt or name can close the script element; the script
then puts every string into the page as text (textContent), never as markup.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

ASSETS = Path(__file__).parent
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(data) -> str:
    """JSON text that is safe inside an HTML <script> element."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return "".join(_JSON_ESCAPES.get(char, char) for char in text)


def render_page(data: dict) -> str:
    template = (ASSETS / "index.html").read_text()
    parts = {
        "title": html.escape(data["title"]),
        "style": (ASSETS / "gallery.css").read_text(),
        "script": (ASSETS / "gallery.js").read_text(),
        "data": embed_json(data),
    }
    missing = [key for key in parts if "{{" + key + "}}" not in template]
    if missing:
        raise ValueError(f"gallery template {ASSETS / 'index.html'} lacks {missing}; reinstall the package")
    # one pass: text put in (a title holding "{{data}}", say) is never substituted again
    return re.sub(r"\{\{(title|style|script|data)\}\}", lambda match: parts[match.group(1)], template)


def write_page(data: dict, path: Path) -> None:
    path.write_text(render_page(data), encoding="utf-8")
