"""Sentiment reward: VADER's compound score (Hutto & Gilbert 2014), in [-1, 1].

A rule-based lexicon scorer with no weights; `target: negative` flips the sign.
"""

from __future__ import annotations

from rewards.base import register_reward
from rewards.text.base import TextReward


@register_reward(
    "sentiment",
    differentiable=False,
    weights="vaderSentiment lexicon (bundled with the package)",
    description="VADER compound sentiment in [-1, 1]; target positive (default) or negative",
)
class SentimentReward(TextReward):
    def __init__(self, target: str = "positive", device: str = "cpu"):
        super().__init__(device)
        if target not in ("positive", "negative"):
            raise ValueError(f"sentiment: target {target!r} is not 'positive' or 'negative'")
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as error:
            raise ImportError(
                "the sentiment reward needs vaderSentiment: pip install 'diffusion-align[text]'"
            ) from error
        self.analyzer = SentimentIntensityAnalyzer()
        self.sign = 1.0 if target == "positive" else -1.0

    def score(self, texts, prompts):
        return [self.sign * self.analyzer.polarity_scores(text)["compound"] for text in texts]
