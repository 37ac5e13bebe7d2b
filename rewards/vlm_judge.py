"""A vision-language model as a judge: it answers a question about each image, and the reward is its
probability of "yes" (or a score it writes, parsed).

    {name: vlm-judge, args: {model: Qwen/Qwen2.5-VL-7B-Instruct,
                             question: "Does this image show {prompt}? Answer yes or no."}}

As UnifiedReward and Pref-GRPO judge with the Qwen2.5-VL family. `mode: probability` (default) reads
the next-token distribution after the chat template's assistant turn: P(yes) / (P(yes) + P(no)) over
the answer words' first tokens (and their capitalised forms where those are single tokens), one
forward pass for the whole batch (left padding). `mode: score` generates up to `max_new_tokens`,
reads the first number and maps `score_range` to [0, 1]; an answer with no number is NaN, which the
training loop refuses (and counts) rather than trains on. Black-box and batched: a 7B judge belongs
on its own device, behind `align serve-rewards --reward vlm-judge` (docs/serving.md).
"""

from __future__ import annotations

import re

import torch

from rewards.base import Reward, register_reward, to_pil


def first_number(text: str) -> float:
    """The first number written in `text` (NaN if none)."""
    found = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(found.group()) if found else float("nan")


class VLMJudgeReward(Reward):
    differentiable = False

    def __init__(
        self,
        *,
        model: str = "Qwen/Qwen2.5-VL-7B-Instruct",
        question: str = "Does this image show {prompt}? Answer yes or no.",
        mode: str = "probability",
        answer: str = "yes",
        against: str = "no",
        score_range: tuple[float, float] = (0.0, 10.0),
        max_new_tokens: int = 8,
        dtype: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if mode not in ("probability", "score"):
            raise ValueError(f"vlm-judge: mode must be probability or score, got {mode!r}")
        if "{prompt}" not in question:
            raise ValueError("vlm-judge: the question must contain {prompt}, where the image's prompt goes")
        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"  # the last position is every row's next token
        dtypes = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.model = (
            AutoModelForImageTextToText.from_pretrained(model, dtype=dtypes[dtype]).to(self.device).eval()
        )
        self.question, self.mode = question, mode
        self.low, self.high = (float(v) for v in score_range)
        self.max_new_tokens = max_new_tokens
        self.yes, self.no = self._first_tokens(answer), self._first_tokens(against)

    def _first_tokens(self, word: str) -> list[int]:
        """The first token of `word`, plus those of its capitalised forms that are one token."""
        encode = self.processor.tokenizer.encode
        ids = [encode(word, add_special_tokens=False)[0]]
        for variant in (word.capitalize(), word.upper()):
            encoded = encode(variant, add_special_tokens=False)
            if len(encoded) == 1:
                ids.append(encoded[0])
        return sorted(set(ids))

    def _inputs(self, images, prompts):
        texts = []
        for prompt in prompts:
            content = [{"type": "image"}, {"type": "text", "text": self.question.format(prompt=prompt)}]
            texts.append(
                self.processor.apply_chat_template(
                    [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
                )
            )
        return self.processor(text=texts, images=to_pil(images), return_tensors="pt", padding=True).to(
            self.device
        )

    @torch.no_grad()
    def score(self, images, prompts):
        inputs = self._inputs(images, prompts)
        if self.mode == "probability":
            logits = self.model(**inputs).logits[:, -1].float().log_softmax(-1)
            yes, no = logits[:, self.yes].logsumexp(-1), logits[:, self.no].logsumexp(-1)
            return torch.sigmoid(yes - no)  # P(yes) / (P(yes) + P(no))
        generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = self.processor.batch_decode(
            generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        values = torch.tensor([first_number(a) for a in answers], dtype=torch.float32)
        return ((values - self.low) / (self.high - self.low)).clamp(0, 1)


register_reward(
    "vlm-judge",
    differentiable=False,
    weights="a vision-language model by hub id or directory (Qwen2.5-VL by default)",
    description="P(yes) of a VLM asked a question about the image (or a score it writes, parsed)",
)(VLMJudgeReward)
