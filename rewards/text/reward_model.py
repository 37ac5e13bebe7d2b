"""A sequence-classification reward model (hub id or directory) scoring prompt + completion.

The conversation is rendered with the reward model's chat template when its tokenizer has one
(user: prompt, assistant: completion), else as the pair (prompt, completion). The reward is the
logit of `label` (0 for the usual single-output reward models).
"""

from __future__ import annotations

import torch

from rewards.base import register_reward
from rewards.text.base import TextReward


@register_reward(
    "text-reward-model",
    differentiable=False,
    weights="`model`: a transformers sequence-classification hub id or directory",
    description="logit of a sequence-classification reward model on (prompt, completion)",
)
class RewardModelReward(TextReward):
    def __init__(
        self,
        model: str,
        label: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
        max_length: int = 1024,
        chunk_size: int = 16,
    ):
        super().__init__(device)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model, dtype=getattr(torch, dtype)
            )
        except OSError as error:
            raise ValueError(
                f"text-reward-model: cannot load {model!r}: {str(error).splitlines()[0]}"
            ) from error
        labels = self.model.config.num_labels
        if not 0 <= label < labels:
            raise ValueError(f"text-reward-model: label {label} out of range; {model} has {labels} outputs")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.label, self.max_length, self.chunk_size = label, max_length, chunk_size

    def _encode(self, texts, prompts):
        if getattr(self.tokenizer, "chat_template", None):
            conversations = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": t}], tokenize=False
                )
                for t, p in zip(texts, prompts)
            ]
            return self.tokenizer(
                conversations, padding=True, truncation=True, max_length=self.max_length,
                add_special_tokens=False, return_tensors="pt",
            )  # fmt: skip
        return self.tokenizer(
            prompts, texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def score(self, texts, prompts):
        device = next(self.model.parameters()).device
        values = []
        for start in range(0, len(texts), self.chunk_size):
            stop = start + self.chunk_size
            batch = self._encode(texts[start:stop], prompts[start:stop]).to(device)
            values.append(self.model(**batch).logits[:, self.label].float().cpu())
        return torch.cat(values)
