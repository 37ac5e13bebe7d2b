"""Sampling completions token by token from a causal LM and its key/value cache.

transformers' `generate` does this with machinery around every token (input preparation, logits
processors and stopping criteria for every option it has); on a small model that machinery is a
large share of the decoding time, and decoding is most of a text GRPO step. The draws are the ones
`generate` makes with our settings: float32 logits of the last position, transformers' own
temperature and top-p warpers, softmax and one `torch.multinomial` per token (argmax when greedy),
finished rows fed the pad token, and a stop once every row has ended.

Where the model is a plain full-attention decoder (`direct_steps`), each step also skips the
model's own wrappers: it calls the decoder and the output head directly and hands the decoder the
attention mask transformers would build for a one-token step (every real key visible; the pads of
left-padded prompts hidden), made once for the whole completion, where transformers rebuilds it
for every token. The logits are the same tensors, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# decoders whose one-token step mask is transformers' standard causal one (with full attention)
STANDARD_MASK_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo2"})


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


def direct_steps(model) -> bool:
    """Whether a one-token step may call `model`'s decoder and head with a mask made here: a
    family in STANDARD_MASK_FAMILIES on SDPA or eager attention, every layer full attention (no
    sliding window, no chunks), and no peft prompt-learning adapter (which adds virtual tokens in
    the wrapper's forward)."""
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return False
    config = model.config
    if config.model_type not in STANDARD_MASK_FAMILIES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(config, "attention_chunk_size", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None


def step_function(model, prompt_mask: torch.Tensor, max_new_tokens: int) -> Callable:
    """step(input_ids [B, L], position_ids [B, L], cache) -> float32 logits of the last position [B, V].

    The attention mask covers what the cache holds plus the L new tokens (the prompts'
    `prompt_mask`, then ones); the model sees the same mask, position ids and cache as under
    `generate`.
    """
    batch = prompt_mask.shape[0]
    full = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], 1)

    if not direct_steps(model):

        def step(input_ids, position_ids, cache):
            output = model(
                input_ids=input_ids,
                attention_mask=full[:, : cache.get_seq_length() + input_ids.shape[1]],
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            return output.logits[:, -1].float()

        return step

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = causal.get_decoder(), causal.get_output_embeddings()
    keep = full.bool()[:, None, None, :]  # [B, 1, 1, K]: what SDPA's mask for one query holds
    if causal.config._attn_implementation == "eager":  # eager adds the mask to the scores
        dtype = causal.get_input_embeddings().weight.dtype
        keep = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
            ~keep, torch.finfo(dtype).min
        )
    # without pads transformers hands SDPA no mask at all (a faster kernel on GPUs): let it
    padded = not bool(prompt_mask.all())

    def step(input_ids, position_ids, cache):
        seen = cache.get_seq_length() + input_ids.shape[1]
        one_token = input_ids.shape[1] == 1 and padded
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=keep[..., :seen] if one_token else full[:, :seen],
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        return head(hidden[:, -1:])[:, -1].float()

    return step


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
    prompt_positions = positions(prompt_mask)
    if cache is None:
        inputs, position_ids = prompt_ids, prompt_positions
        cache = DynamicCache(config=model.config)
    else:
        inputs, position_ids = prompt_ids[:, -1:], prompt_positions[:, -1:]
    step = step_function(model, prompt_mask, max_new_tokens)
    unfinished = torch.ones(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    chosen = []
    for _ in range(max_new_tokens):
        scores = step(inputs, position_ids, cache)
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
        position_ids = position_ids[:, -1:] + 1
    return torch.stack(chosen, 1)
