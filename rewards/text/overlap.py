"""Reference-overlap rewards from sacrebleu, in [0, 1]: BLEU and chrF of each completion.

BLEU as a reward for instruction following follows BLEUBERI (Chang et al. 2025, arXiv:2505.11080):
sentence BLEU against reference answers, with sacrebleu's exponential smoothing. chrF (Popovic
2015) counts character n-grams, so it also rewards near-misses in spelling and morphology.
"""

from __future__ import annotations

from rewards.base import register_reward
from rewards.text.base import References, TextReward


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError as error:
        raise ImportError("bleu/chrf rewards need sacrebleu: pip install 'diffusion-align[text]'") from error
    return sacrebleu


@register_reward(
    "bleu",
    differentiable=False,
    weights="none",
    description="sentence BLEU / 100 against the prompt's references (sacrebleu, exp smoothing)",
)
class BleuReward(TextReward):
    def __init__(self, references: dict | str, device: str = "cpu"):
        super().__init__(device)
        self.metric = _sacrebleu().metrics.BLEU(effective_order=True)
        self.references = References(references)

    def score(self, texts, prompts):
        return [
            self.metric.sentence_score(text, refs).score / 100
            for text, refs in zip(texts, self.references(prompts))
        ]


@register_reward(
    "chrf",
    differentiable=False,
    weights="none",
    description="sentence chrF / 100 against the prompt's references (sacrebleu; word_order 2 = chrF++)",
)
class ChrfReward(TextReward):
    def __init__(self, references: dict | str, word_order: int = 0, device: str = "cpu"):
        super().__init__(device)
        self.metric = _sacrebleu().metrics.CHRF(word_order=word_order)
        self.references = References(references)

    def score(self, texts, prompts):
        return [
            self.metric.sentence_score(text, refs).score / 100
            for text, refs in zip(texts, self.references(prompts))
        ]
