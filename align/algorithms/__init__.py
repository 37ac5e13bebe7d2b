"""Algorithms: each a small module (collect + loss) registered by name on the one loop. This package
file imports nothing; align/catalogue.py imports every algorithm module, the text ones included, and
the registries load it on their first lookup."""
