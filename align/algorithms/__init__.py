"""Algorithms: each a small module (collect + loss) registered by name on the one loop."""

from align.algorithms import policy_gradient, reward_backprop  # noqa: F401
