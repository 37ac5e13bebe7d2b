"""Our decoding loop draws exactly what transformers' `generate` draws with the same settings."""

import pytest
import torch
from transformers import GenerationConfig

from align.text.decode import sample_tokens
from align.text.models import load_text_policy

PROMPTS = ["what is 3 + 4 ?", "reply with yes", "what is 12 plus 7 ? reply with the number only"]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return load_text_policy("tiny:llama", trainable="full")


def _generate(policy, tokens, temperature, top_p, max_new_tokens):
    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_k=0 if sampling else None,
        top_p=top_p if sampling else None,
        pad_token_id=policy.pad_id,
        eos_token_id=policy.stop_ids,
    )
    ids, mask = tokens["prompt_ids"], tokens["prompt_mask"]
    output = policy.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return output[:, ids.shape[1] :]


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_draws_match_generate(policy, temperature, top_p):
    tokens = policy.encode_prompts([p for p in PROMPTS for _ in range(2)])
    saved = policy.stop_ids
    policy.stop_ids = sorted({*saved, 7})  # a frequent token: rows end early, at different steps
    ended = []
    try:
        for seed in range(3):
            torch.manual_seed(seed)
            expected = _generate(policy, tokens, temperature, top_p, max_new_tokens=12)
            torch.manual_seed(seed)
            ours = sample_tokens(
                policy.model,
                tokens["prompt_ids"],
                tokens["prompt_mask"],
                max_new_tokens=12,
                temperature=temperature,
                top_p=top_p,
                stop_ids=policy.stop_ids,
                pad_id=policy.pad_id,
            )
            assert torch.equal(ours, expected), (seed, ours, expected)
            ended += torch.isin(ours, torch.tensor(policy.stop_ids)).any(1).tolist()
    finally:
        policy.stop_ids = saved
    if temperature > 0:
        assert any(ended) and not all(ended)  # the pad-after-stop path and the early stop were exercised
