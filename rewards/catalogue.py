"""Every built-in reward module, in one place: importing this registers every reward.

rewards.base.REWARDS imports it on its first miss or listing (`REWARDS.load()`); nothing else in
rewards/ imports it, so no reward module and the registry import each other in a ring. A reward
module added to the project is added here (tests/test_rewards_core.py checks none is missing).
"""

from rewards import (  # noqa: F401
    aesthetic,
    clip_score,
    dino,
    discriminator,
    ensemble,
    geneval,
    geneval_detector,
    geneval_video,
    hps,
    jpeg,
    ocr,
    pickscore,
    proxy,
    remote,
    video,
    video_reward,
    vlm_judge,
)
from rewards.text import (  # noqa: F401
    embedding,
    overlap,
    reward_model,
    sentiment,
    verifiable,
)
from rewards.text import ensemble as text_ensemble  # noqa: F401
