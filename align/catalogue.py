"""Every built-in algorithm module, in one place: importing this registers every algorithm and its
config (the text pathway's included).

align.algorithms.base.ALGORITHMS and align.config.ALGORITHM_CONFIGS import it on their first miss or
listing (`ALGORITHMS.load()`); nothing they import imports it back, so the schema, the registry and
the algorithms form no ring. An algorithm module added to the project is added here
(tests/test_every_algorithm.py checks that every registered algorithm has a tiny recipe, and
tests/test_layers.py that no module imports another in a ring).
"""

from align.algorithms import (  # noqa: F401
    dpo,
    forward_process,
    policy_gradient,
    prdp,
    reward_backprop,
    trajectory_dpo,
)
from align.text import grpo, preference  # noqa: F401
