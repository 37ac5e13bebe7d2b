"""Settings every text algorithm shares: how the policy is prompted, samples and scores tokens.

They live in the algorithm's config (the experiment's `model:` section names the model; these
say how to talk to it), so `algorithm: {name: text-grpo, max_new_tokens: 8, ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from align.schema import param
from align.text.logprob import BACKENDS


@dataclass
class TextSettings:
    max_new_tokens: int = param(32, min=1)  # completion budget: sampling and training time grow with it
    temperature: float = param(1.0, gt=0.0)  # sampling temperature: exploration vs sample quality
    top_p: float = param(1.0, gt=0.0, max=1.0)  # nucleus sampling; log-probs stay the full policy's
    system_prompt: str | None = None  # None: the chat template's own default (if any)
    chat_template: bool | None = None  # None: use the tokenizer's chat template when it has one
    logprob_backend: str = param("auto", choices=BACKENDS)  # auto: triton on CUDA, chunked elsewhere
    logprob_chunk_size: int = param(512, min=1)  # logit rows held at once: memory (rows x vocab) vs speed
    eval_max_new_tokens: int | None = param(None, min=1)  # greedy evaluation budget; None = max_new_tokens


def policy_options(settings: TextSettings) -> dict:
    """Keyword arguments of TextPolicy from the settings."""
    return {
        "system_prompt": settings.system_prompt,
        "chat_template": settings.chat_template,
        "logprob_backend": settings.logprob_backend,
        "chunk_size": settings.logprob_chunk_size,
    }
