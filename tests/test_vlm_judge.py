"""The VLM judge (rewards/vlm_judge.py) on a tiny random Qwen2.5-VL built in code (rewards/tiny.py),
loaded through transformers' real path."""

import math

import pytest
import torch

from rewards.base import build_reward
from rewards.tiny import tiny_qwen25_vl
from rewards.vlm_judge import first_number


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return build_reward("vlm-judge", model=tiny_qwen25_vl(tmp_path_factory.mktemp("vlm") / "qwen"))


def images(count: int) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_reward_is_p_yes_against_no_from_one_batched_pass(judge):
    prompts = ["a red circle", "two blue squares left of a yellow triangle", "a dog"]  # unequal lengths
    values = judge(images(3), prompts)
    assert values.shape == (3,) and bool(((values > 0) & (values < 1)).all())
    assert torch.equal(values, judge(images(3), prompts))  # deterministic
    alone = torch.cat([judge(images(3)[i : i + 1], [p]) for i, p in enumerate(prompts)])
    assert torch.allclose(values, alone, atol=1e-5)  # left padding leaves each row's answer as it is
    inputs = judge._inputs(images(3)[:1], prompts[:1])  # by hand, for the first image
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0, -1].float()
    yes, no = logits[judge.yes].exp().sum(), logits[judge.no].exp().sum()
    assert math.isclose(float(values[0]), float(yes / (yes + no)), rel_tol=1e-4)


def test_settings_are_checked_and_scores_parsed(judge, tmp_path):
    with pytest.raises(ValueError, match="must contain \\{prompt\\}"):
        build_reward("vlm-judge", model=str(tmp_path), question="Is it good?")
    assert first_number("Score: 7.5 / 10") == 7.5 and first_number("-2") == -2.0
    assert math.isnan(first_number("no idea"))
