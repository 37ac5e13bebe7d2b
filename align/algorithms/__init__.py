"""Algorithms: each a small module (collect + loss) registered by name on the one loop. Importing this
package registers every one, the text algorithms (align/text/) included."""

from align.algorithms import dpo, forward_process, policy_gradient, prdp, reward_backprop, trajectory_dpo  # noqa: F401
from align.text import grpo, preference  # noqa: F401
