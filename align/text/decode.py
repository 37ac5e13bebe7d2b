"""Sampling completions token by token from a causal LM and its key/value cache.

transformers' `generate` does this with machinery around every token (input preparation, logits
processors and stopping criteria for every option it has); on a small model that machinery is a
large share of the decoding time, and decoding is most of a text GRPO step. The draws are the ones
`generate` makes with our settings: float32 logits of the last position, transformers' own
temperature and top-p warpers, softmax and one `torch.multinomial` per token (argmax when greedy),
finished rows fed the pad token, and a stop once every row has ended.
"""

from __future__ import annotations

import torch


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only, as `generate` counts them (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def warpers(temperature: float, top_p: float) -> list:
    """The logits warpers `generate` applies when sampling at `temperature` with `top_p`."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    if temperature <= 0:
        return []
    chosen = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    return chosen + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])


@torch.inference_mode()
def sample_tokens(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: list[int],
    pad_id: int,
    cache=None,
) -> torch.Tensor:
    """Completion ids [B, <= max_new_tokens] after left-padded prompts [B, P]; temperature 0 = greedy.

    `cache`: the prompts but their last token already run (a shared prompt pass); None runs them here.
    Inference mode: the returned ids are inference tensors; clone them before autograd sees them.
    """
    from transformers import DynamicCache

    steps = warpers(temperature, top_p)
    stops = torch.tensor(stop_ids, device=prompt_ids.device)
    inputs = prompt_ids if cache is None else prompt_ids[:, -1:]
    cache = DynamicCache(config=model.config) if cache is None else cache
    mask = prompt_mask
    unfinished = torch.ones(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    chosen = []
    for _ in range(max_new_tokens):
        output = model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions(mask)[:, -inputs.shape[1] :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        scores = output.logits[:, -1].float()
        for warp in steps:
            scores = warp(None, scores)  # these warpers read the scores only
        if temperature > 0:
            tokens = torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)
        else:
            tokens = scores.argmax(-1)
        tokens = torch.where(unfinished, tokens, pad_id)
        chosen.append(tokens)
        unfinished &= ~torch.isin(tokens, stops)
        if not unfinished.any():
            break
        inputs = tokens[:, None]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    return torch.stack(chosen, 1)
