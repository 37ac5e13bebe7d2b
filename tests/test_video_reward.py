"""The VideoAlign-style reward (rewards/video_reward.py) on a tiny random Qwen2.5-VL with an rm_head."""

import pytest
import torch
from safetensors.torch import save_file

from align.toy.video import render_clips
from rewards.base import build_reward
from rewards.tiny import tiny_video_reward

PROMPTS = ["a red circle moving left slowly", "a green triangle moving up left of a yellow circle"]


@pytest.fixture(scope="module", params=[True, False], ids=["reward-tokens", "last-token"])
def model_dir(request, tmp_path_factory):
    return tiny_video_reward(tmp_path_factory.mktemp("video-reward") / "model", reward_tokens=request.param)


def test_three_dimensions_weighted_and_each_clip_scored_as_if_alone(model_dir):
    reward = build_reward("video-reward", model=model_dir, weights={"VQ": 1.0, "TA": 2.0})
    clips = render_clips(PROMPTS, [0, 1])
    dims = reward.dimensions(clips, PROMPTS)
    assert dims.shape == (2, 3) and bool(torch.isfinite(dims).all())
    torch.testing.assert_close(reward(clips, PROMPTS), dims[:, 0] + 2 * dims[:, 2])
    alone = torch.cat([reward.dimensions(clips[i : i + 1], PROMPTS[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(alone, dims, atol=1e-4, rtol=1e-4)  # left padding: the batch changes nothing
    other = reward.dimensions(clips.flip(1), PROMPTS)  # the same frames played backwards
    assert float((other - dims).abs().max()) > 1e-4


def test_each_dimension_reads_its_own_head_row(model_dir, tmp_path):
    reward = build_reward("video-reward", model=model_dir)
    clips = render_clips(PROMPTS[:1], [0])
    before = reward.dimensions(clips, PROMPTS[:1])
    with torch.no_grad():
        reward.head.weight[1] += 1.0  # MQ's row only
    after = reward.dimensions(clips, PROMPTS[:1])
    assert torch.equal(before[:, [0, 2]], after[:, [0, 2]]) and not torch.equal(before[:, 1], after[:, 1])


def test_a_model_without_a_reward_head_or_with_the_wrong_one_is_refused(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "reward_head.safetensors").unlink()
    with pytest.raises(ValueError, match="no rm_head"):
        build_reward("video-reward", model=str(broken))
    save_file({"rm_head.weight": torch.zeros(2, 32)}, str(broken / "reward_head.safetensors"))
    with pytest.raises(ValueError, match="2 outputs, expected 3"):
        build_reward("video-reward", model=str(broken))
    with pytest.raises(ValueError, match="unknown dimensions"):
        build_reward("video-reward", model=model_dir, weights={"aesthetic": 1.0})
