"""Text rewards (`reward(texts, prompts) -> [B]`), registered in the shared reward registry."""

from rewards.text import embedding, ensemble, overlap, reward_model, sentiment, verifiable  # noqa: F401
from rewards.text.base import References, TextReward

__all__ = ["References", "TextReward"]
