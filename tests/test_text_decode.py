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


def _draws(model, tokens, seed, temperature, top_p, max_new_tokens, stop_ids, pad_id):
    """(our completion ids, generate's) for the same prompts, settings and seed."""
    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_k=0 if sampling else None,
        top_p=top_p if sampling else None,
        pad_token_id=pad_id,
        eos_token_id=stop_ids,
    )
    ids, mask = tokens["prompt_ids"], tokens["prompt_mask"]
    torch.manual_seed(seed)
    expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1] :]
    torch.manual_seed(seed)
    ours = sample_tokens(
        model,
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_ids=stop_ids,
        pad_id=pad_id,
    )
    return ours, expected


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_draws_match_generate(policy, temperature, top_p):
    tokens = policy.encode_prompts([p for p in PROMPTS for _ in range(2)])
    stop_ids = sorted({*policy.stop_ids, 7})  # a frequent token: rows end early, at different steps
    ended = []
    for seed in range(3):
        ours, expected = _draws(policy.model, tokens, seed, temperature, top_p, 12, stop_ids, policy.pad_id)
        assert torch.equal(ours, expected), (seed, ours, expected)
        ended += torch.isin(ours, torch.tensor(stop_ids)).any(1).tolist()
    if temperature > 0:
        assert any(ended) and not all(ended)  # the pad-after-stop path and the early stop were exercised


def _tiny(family: str, vocab: int, attention: str = "sdpa", **extra):
    """A seeded random causal LM of `family` (2 layers, hidden 32) on `attention`."""
    import transformers

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
        "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    }[family]
    sizes = (
        {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}
        if family == "gpt2"
        else {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        }
    )
    config = config_class(vocab_size=vocab, pad_token_id=0, eos_token_id=1, **sizes, **extra)
    config._attn_implementation = attention
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = model_class(config)
    with torch.no_grad():  # larger weights than the initialiser's: the draws depend on every logit
        for param in model.parameters():
            param.mul_(4.0 if param.dim() > 1 else 1.0)
    return model.eval()


CASES = {  # name: (family, attention, extra config)
    "qwen2-sdpa": ("qwen2", "sdpa", {}),
    "qwen3": ("qwen3", "sdpa", {"head_dim": 8}),
    "phi3": ("phi3", "sdpa", {}),
    "gemma": ("gemma", "sdpa", {"head_dim": 8}),
    "olmo2": ("olmo2", "sdpa", {}),
    "llama-eager": ("llama", "eager", {}),
    "mistral-no-window": ("mistral", "sdpa", {"sliding_window": None}),
    "mistral-window-4": ("mistral", "sdpa", {"sliding_window": 4}),  # the window must mask
    "gpt2": ("gpt2", "sdpa", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("padded", [True, False])
def test_draws_match_generate_on_other_families_masks_and_attention(policy, case, padded):
    family, attention, extra = CASES[case]
    model = _tiny(family, len(policy.tokenizer), attention, **extra)
    prompts = [p for p in PROMPTS for _ in range(2)] if padded else [PROMPTS[2]] * 4
    tokens = policy.encode_prompts(prompts)
    assert bool(tokens["prompt_mask"].all()) is not padded
    stop_ids = sorted({*policy.stop_ids, 7})
    for seed in range(2):
        ours, expected = _draws(model, tokens, seed, 1.0, 1.0, 10, stop_ids, policy.pad_id)
        assert torch.equal(ours, expected), (case, seed, ours, expected)


def test_the_decode_benchmark_checks_its_draws_and_prints_the_ratio():
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "text_decode.py"
    command = [sys.executable, str(script), "--repeats", "2", "--tokens", "4", "--batch", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ratio = re.search(r"^ours\s+([0-9.]+)\s+([0-9.]+)$", done.stdout, re.M)
    assert ratio and float(ratio.group(1)) > 0 and float(ratio.group(2)) > 0, done.stdout
