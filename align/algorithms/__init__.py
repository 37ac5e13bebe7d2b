"""Algorithms: each a small module (collect + loss) registered by name on the one loop."""
