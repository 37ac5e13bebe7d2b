"""VLM-RM's goal-baseline CLIP reward: its algebra against the CLIP score, ranking and gradients."""

import numpy as np
import pytest
import torch

from rewards.base import build_reward
from rewards.open_clip_models import image_embeddings
from rewards.toy_world import make_example, prompt_splits


def _renders(prompts, seed=0):
    arrays = [np.asarray(make_example(p, seed)[0], dtype=np.float32) for p in prompts]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_alpha_zero_is_the_clip_score_and_alpha_one_measures_along_the_goal_direction():
    prompts = prompt_splits()["heldout"][:12]
    images = _renders(prompts)
    clip = build_reward("clip-toy")(images, prompts)
    plain = build_reward("clip-goal-toy", alpha=0.0)(images, prompts)
    assert torch.allclose(plain, clip, atol=1e-5)  # 1 - |e - g|^2 / 2 = e.g for unit vectors
    reward = build_reward("clip-goal-toy", alpha=1.0)
    with torch.no_grad():
        embedded = image_embeddings(reward.clip, images, reward.normalisation)
    goal = reward._texts(prompts)
    direction = torch.nn.functional.normalize(goal - reward.baseline, dim=-1)
    by_hand = 1 - 0.5 * ((embedded - goal) * direction).sum(-1) ** 2  # only the component along d
    assert torch.allclose(reward(images, prompts), by_hand, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_true_captions_outscore_other_captions_and_gradients_reach_the_pixels(alpha):
    prompts = prompt_splits()["heldout"]
    images = _renders(prompts)
    reward = build_reward("clip-goal-toy", alpha=alpha)
    right = reward(images, prompts)
    wrong = reward(images, prompts[1:] + prompts[:1])
    assert float((right > wrong).float().mean()) >= 0.95
    pixels = images[:4].clone().requires_grad_(True)
    reward(pixels, prompts[:4]).sum().backward()
    assert torch.isfinite(pixels.grad).all() and (pixels.grad.flatten(1).abs().sum(1) > 0).all()


def test_bad_settings_fail_with_the_problem_named():
    with pytest.raises(ValueError, match="alpha must lie in"):
        build_reward("clip-goal-toy", alpha=1.5)
