"""HPS v2.1 (Wu et al. 2023, "Human Preference Score v2"): open_clip ViT-H/14 fine-tuned on HPD v2.

    score = cos(image embedding, prompt embedding)        (no logit scale; typical values 0.2-0.35)

following hpsv2/img_score.py (github.com/tgxs002/HPSv2): the architecture is open_clip's ViT-H-14,
the weights are the `state_dict` inside HPS_v2.1_compressed.pt (hub repo xswu/HPSv2), and images are
letterboxed: the longest side resized to 224 (bicubic), the rest zero-padded, then normalised with
the OpenAI CLIP mean/std. Differentiable.
"""

from __future__ import annotations

import torch.nn.functional as F

from rewards.aesthetic import load_weights_file, resolve_file
from rewards.base import register_reward
from rewards.clip_score import ClipScore
from rewards.transforms import ImageTransform

HPS_CHECKPOINT = "xswu/HPSv2/HPS_v2.1_compressed.pt"


class HPS(ClipScore):
    differentiable = True

    def __init__(self, checkpoint: str = HPS_CHECKPOINT, model: str = "ViT-H-14", **kwargs):
        checkpoint_file = resolve_file(checkpoint)  # before building a 1B-parameter model it would not fill
        super().__init__(model=model, pretrained=None, **kwargs)
        state = load_weights_file(checkpoint_file)
        state = state.get("state_dict", state)
        try:
            self.clip.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        except RuntimeError as error:
            raise ValueError(
                f"HPS checkpoint {checkpoint_file} does not fit open_clip model {model!r}: {error}"
            ) from error
        self.clip.requires_grad_(False)
        mean, std, size = self.normalisation
        self.transform = ImageTransform(size, size, tuple(mean), tuple(std), mode="longest")

    def score(self, images, prompts):
        features = self.clip.encode_image(self.transform(images).to(next(self.clip.parameters()).dtype))
        return self.scale * (F.normalize(features.float(), dim=-1) * self._texts(prompts)).sum(-1)


register_reward(
    "hps",
    differentiable=True,
    weights=f"open_clip ViT-H-14 + checkpoint={HPS_CHECKPOINT} (org/repo/file on the hub, or a local file)",
    description="HPS v2.1 human preference score (cosine similarity)",
)(HPS)
