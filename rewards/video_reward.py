"""A VideoAlign-style multi-dimensional video reward model (Liu et al. 2025, "Improving Video Generation
with Human Feedback": VideoReward), loaded by path:

    {name: video-reward, args: {model: DIR, weights: {VQ: 1.0, MQ: 1.0, TA: 1.0}}}

The model is a Qwen2-VL-family vision-language model read through transformers
(AutoModelForImageTextToText) whose final hidden state feeds a linear head `rm_head` [3, hidden] with
three outputs: visual quality (VQ), motion quality (MQ) and text alignment (TA). Where the tokenizer has
VideoAlign's reward tokens (<|VQ_reward|>, <|MQ_reward|>, <|TA_reward|>) they close the query and each
dimension is read at its own token; otherwise all three are read at the last one. The head's tensors are
the `rm_head.*` entries of DIR's safetensors (VideoAlign keeps them beside the backbone's). The reward is
the weighted sum of the dimensions; `dimensions(clips, prompts)` gives all three. Black-box and batched:
a 2B judge belongs on its own device, behind `align serve-rewards` (docs/serving.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rewards.base import Reward, register_reward, to_uint8

DIMENSIONS = ("VQ", "MQ", "TA")
REWARD_TOKENS = tuple(f"<|{d}_reward|>" for d in DIMENSIONS)
QUESTION = (
    "Please evaluate the video's visual quality, motion quality and alignment with its caption. "
    "Caption: {prompt}"
)


def reward_head(directory: str | Path) -> torch.nn.Linear:
    """The `rm_head` linear layer stored among `directory`'s safetensors."""
    from safetensors import safe_open

    tensors = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                if key.split(".")[-2:-1] == ["rm_head"]:
                    tensors[key.rsplit(".", 1)[1]] = handle.get_tensor(key)
    if "weight" not in tensors:
        raise ValueError(f"video-reward: no rm_head weights in {directory}'s safetensors: not a VideoAlign-style model")
    weight = tensors["weight"]
    if weight.shape[0] != len(DIMENSIONS):
        raise ValueError(f"video-reward: rm_head has {weight.shape[0]} outputs, expected {len(DIMENSIONS)} (VQ, MQ, TA)")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors)
    head.load_state_dict(tensors)
    return head


class VideoRewardModel(Reward):
    differentiable = False
    video = True

    def __init__(self, *, model: str, weights: dict | None = None, question: str = QUESTION, **kwargs):
        super().__init__(**kwargs)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        weights = {"VQ": 1.0, "MQ": 1.0, "TA": 1.0} if weights is None else dict(weights)
        unknown = sorted(set(weights) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"video-reward: unknown dimensions {unknown}; use {', '.join(DIMENSIONS)}")
        if "{prompt}" not in question:
            raise ValueError("video-reward: the question must contain {prompt}, where the clip's caption goes")
        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"  # every row's last tokens line up
        self.model = AutoModelForImageTextToText.from_pretrained(model).to(self.device).eval()
        self.head = reward_head(model).to(self.device)
        self.weights = torch.tensor([float(weights.get(d, 0.0)) for d in DIMENSIONS], device=self.device)
        vocabulary = self.processor.tokenizer.get_vocab()
        self.special = all(token in vocabulary for token in REWARD_TOKENS)
        self.question = question

    def _text(self, prompt: str) -> str:
        content = [{"type": "video"}, {"type": "text", "text": self.question.format(prompt=prompt)}]
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        return text + "".join(REWARD_TOKENS) if self.special else text

    @torch.no_grad()
    def dimensions(self, clips: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """[B, 3]: VQ, MQ and TA of clips [B, F, 3, H, W] in [0, 1]."""
        videos = [to_uint8(clip) for clip in clips]
        inputs = self.processor(
            text=[self._text(p) for p in prompts], videos=videos, return_tensors="pt", padding=True
        ).to(self.device)
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1].float()
        if self.special:  # dimension d at its own token, the (3 - d)-th from the end
            scores = self.head(hidden[:, -len(DIMENSIONS) :])  # [B, 3 tokens, 3 outputs]
            return torch.diagonal(scores, dim1=1, dim2=2)
        return self.head(hidden[:, -1])

    def score(self, images, prompts):
        return self.dimensions(images, prompts) @ self.weights


register_reward(
    "video-reward",
    differentiable=False,
    weights="a VideoAlign-style model by directory (a Qwen2-VL backbone and its rm_head)",
    description="video: weighted visual quality, motion quality and text alignment of a VideoReward model",
)(VideoRewardModel)
