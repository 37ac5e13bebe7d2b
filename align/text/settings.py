"""The text algorithms' settings, data only (this module imports nothing but the schema): what every
text algorithm shares (how the policy is prompted, samples and scores tokens), then each one's own.

They live in the algorithm's config (the experiment's `model:` section names the model; these
say how to talk to it), so `algorithm: {name: text-grpo, max_new_tokens: 8, ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from align.schema import param

BACKENDS = ("auto", "naive", "chunked", "cce")  # token log-prob implementations (align/text/logprob.py)


@dataclass
class TextSettings:
    max_new_tokens: int = param(32, min=1)  # completion budget: sampling and training time grow with it
    temperature: float = param(1.0, gt=0.0)  # sampling temperature: exploration vs sample quality
    top_p: float = param(1.0, gt=0.0, max=1.0)  # nucleus sampling; log-probs stay the full policy's
    system_prompt: str | None = None  # None: the chat template's own default (if any)
    chat_template: bool | None = None  # None: use the tokenizer's chat template when it has one
    logprob_backend: str = param("auto", choices=BACKENDS)  # auto: chunked (cce: cut-cross-entropy)
    logprob_chunk_size: int = param(512, min=1)  # logit rows held at once: memory (rows x vocab) vs speed
    eval_max_new_tokens: int | None = param(None, min=1)  # greedy evaluation budget; None = max_new_tokens
    # rejection-sampling fine-tuning before the first epoch (align/text/rft.py): the model answers each
    # training prompt greedily, then rft_samples - 1 times at rft_temperature (eval_max_new_tokens each);
    # the answers its references judge right are fine-tuned on (token NLL) for rft_epochs passes, with an
    # AdamW of its own at rft_lr, and become the KL anchor. rft_target: answer, as sampled (RFT / STaR);
    # reference, the reference in its place (the form the instruction asks for). 0 epochs = none
    rft_epochs: int = param(0, min=0)
    rft_samples: int = param(1, min=1)
    rft_temperature: float = param(0.7, gt=0.0)
    rft_target: str = param("reference", choices=("answer", "reference"))
    rft_lr: float = param(5e-4, gt=0.0)
    rft_batch_size: int = param(16, min=1)


@dataclass
class TextGRPOConfig(TextSettings):
    name: str = "text-grpo"
    clip_range: float = param(0.2, gt=0.0)  # PPO clip on the per-token ratio: stability vs step size
    clip_range_high: float | None = param(None, gt=0.0)  # DAPO clip-higher (e.g. 0.28); None = clip_range
    kl_coef: float = param(0.0, min=0.0)  # k3 KL to the reference: drift vs reward (DeepSeekMath: 0.04)
    normalisation: str = param("token", choices=("token", "sequence"))  # how token losses are averaged
    scale_advantages: bool = True  # divide by the group std (False: Dr. GRPO, mean only)


@dataclass
class TextDPOConfig(TextSettings):
    name: str = "text-dpo"
    beta: float = param(0.1, gt=0.0)  # strength of the KL anchor to the reference: drift vs preference
    label_smoothing: float = param(0.0, min=0.0, max=0.5)  # conservative DPO: assumed label noise
    pairs: str | None = None  # JSONL of {prompt, chosen, rejected}
    max_pairs: int | None = param(None, min=1)  # use only the first N pairs of the file


@dataclass
class TextSimPOConfig(TextSettings):
    name: str = "text-simpo"
    beta: float = param(2.0, gt=0.0)  # SimPO's reward scale on mean token log-probs
    gamma: float = param(1.0, min=0.0)  # target reward margin (SimPO: gamma / beta about 0.5)
    pairs: str | None = None  # JSONL of {prompt, chosen, rejected}
    max_pairs: int | None = param(None, min=1)


@dataclass
class TextOnlineDPOConfig(TextSettings):
    name: str = "text-online-dpo"
    beta: float = param(0.1, gt=0.0)
    label_smoothing: float = param(0.0, min=0.0, max=0.5)
    reward_margin: float = param(0.0, min=0.0)  # skip pairs whose rewards differ by no more than this


def policy_options(settings: TextSettings) -> dict:
    """Keyword arguments of TextPolicy from the settings."""
    return {
        "system_prompt": settings.system_prompt,
        "chat_template": settings.chat_template,
        "logprob_backend": settings.logprob_backend,
        "chunk_size": settings.logprob_chunk_size,
    }
