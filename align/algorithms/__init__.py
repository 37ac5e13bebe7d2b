"""Algorithms: each a small module (collect + loss) registered by name on the one loop."""

from align.algorithms import dpo, policy_gradient, prdp, reward_backprop  # noqa: F401
