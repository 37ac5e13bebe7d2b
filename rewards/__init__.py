"""Rewards: the protocol, the registry, and every reward (each in its own module).

Importing this package registers every reward; no reward imports its heavy dependencies
(open_clip, OCR engines, ...) before it is constructed.
"""

from rewards import (  # noqa: F401
    aesthetic,
    clip_score,
    dino,
    discriminator,
    ensemble,
    geneval,
    hps,
    jpeg,
    ocr,
    pickscore,
    text,
)
from rewards.base import REWARDS, Reward, build_reward, register_reward

__all__ = ["REWARDS", "Reward", "build_reward", "register_reward"]
