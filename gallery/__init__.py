"""Comparison galleries: the same prompts and seeds through several models, scored, as a static page.

`build_gallery(models, prompts, seeds, rewards, out)` is what `align gallery` and the demo call.
"""

from gallery.build import build_gallery

__all__ = ["build_gallery"]
