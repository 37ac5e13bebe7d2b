"""The text policy on a tiny random Llama with a tokenizer built in code: sampling, masks, log-probs."""

import pytest
import torch

from align.losses import ppo_clip_loss
from align.text.models import add_lora, load_text_policy
from align.text.policy import TextPolicy, repeat_rows, shared_prompts
from align.text.tiny import tiny_llama, tiny_tokenizer

PROMPTS = ["what is 3 + 4 ?", "reply with yes", "what is 12 plus 7 ? reply with the number only"]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return load_text_policy("tiny:llama", lora={"rank": 4, "alpha": 8.0})


def _perturb_lora(policy, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def _naive_log_probs(model, tokens, temperature=1.0):
    """Full logits from the model's own forward, log_softmax, gather: the reference computation."""
    ids = torch.cat([tokens["prompt_ids"], tokens["completion_ids"]], 1)
    mask = torch.cat([tokens["prompt_mask"], tokens["completion_mask"]], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float() / temperature
    width = tokens["prompt_ids"].shape[1]
    logits = logits[:, width - 1 : -1]
    values = logits.log_softmax(-1).gather(-1, tokens["completion_ids"][..., None]).squeeze(-1)
    return values * tokens["completion_mask"]


def test_chat_template_and_plain_prompts():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    templated = TextPolicy(model, tokenizer, system_prompt="reply with the number only")
    assert templated.format_prompt("what is 3 + 4 ?") == (
        "<system> reply with the number only <user> what is 3 + 4 ? <assistant>"
    )
    plain = TextPolicy(model, tiny_tokenizer(chat_template=False), system_prompt="answer")
    assert plain.format_prompt("what is 1 + 1 ?") == "answer\n\nwhat is 1 + 1 ?"
    with pytest.raises(ValueError, match="has none; set chat_template: false"):
        TextPolicy(model, tiny_tokenizer(chat_template=False), chat_template=True)


def test_prompts_are_left_padded_with_masks(policy):
    tokens = policy.encode_prompts(PROMPTS)
    ids, mask = tokens["prompt_ids"], tokens["prompt_mask"]
    assert ids.shape[0] == 3 and mask[2].all()  # the longest prompt fills the width
    lengths = mask.sum(1)
    for row, length in zip(range(3), lengths.tolist()):
        assert mask[row, -length:].all() and not mask[row, :-length].any()  # padding on the left
        assert (ids[row, :-length] == policy.pad_id).all()


def test_completion_mask_counts_up_to_the_first_stop_token(policy):
    eos, pad = policy.stop_ids[0], policy.pad_id
    ids = torch.tensor([[7, 8, eos, pad, pad], [7, 8, 9, 10, 11], [eos, 7, eos, 8, 9]])
    assert policy.completion_mask(ids).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_sampled_log_probs_equal_rescored_ones_ratio_exactly_one(policy):
    _perturb_lora(policy)
    trajectory = policy.sample(PROMPTS * 2, max_new_tokens=6, temperature=1.0, seed=0)
    rescored = policy.token_log_probs(trajectory.extra, temperature=1.0)
    assert torch.equal(rescored, trajectory.log_probs)
    assert trajectory.log_probs.shape == (6, 6) and trajectory.log_probs.dtype == torch.float32
    assert (
        trajectory.extra["temperature"].tolist() == [1.0] * trajectory.batch_size
    )  # per row, not in noise_levels
    assert trajectory.noise_levels.tolist() == [0.0] * 6
    _, stats = ppo_clip_loss(
        rescored, trajectory.log_probs, torch.ones(6), 0.2, trajectory.extra["completion_mask"]
    )
    assert stats["ratio_min"] == 1.0 and stats["ratio_max"] == 1.0


def test_same_seed_same_samples_and_texts_decode(policy):
    first = policy.sample(PROMPTS, max_new_tokens=5, temperature=1.0, seed=3)
    second = policy.sample(PROMPTS, max_new_tokens=5, temperature=1.0, seed=3)
    assert torch.equal(first.extra["completion_ids"], second.extra["completion_ids"])
    assert first.extra["texts"] == policy.decode(
        first.extra["completion_ids"], first.extra["completion_mask"]
    )


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_scoring_equals_the_full_logit_forward(policy, temperature):
    _perturb_lora(policy, seed=2)
    trajectory = policy.sample(PROMPTS, max_new_tokens=6, temperature=temperature, seed=1)
    naive = _naive_log_probs(policy.model, trajectory.extra, temperature)
    assert torch.allclose(trajectory.log_probs, naive, atol=1e-5)


def test_greedy_tokens_are_the_argmax_of_the_padded_forward(policy):
    """Generation (KV cache, left padding) and scoring see the same positions and masks."""
    _perturb_lora(policy, seed=3)
    trajectory = policy.sample(PROMPTS, max_new_tokens=6, temperature=0.0)
    extra = trajectory.extra
    ids = torch.cat([extra["prompt_ids"], extra["completion_ids"]], 1)
    mask = torch.cat([extra["prompt_mask"], extra["completion_mask"]], 1)
    logits = policy.model(
        input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
    ).logits
    width = extra["prompt_ids"].shape[1]
    argmax = logits[:, width - 1 : -1].argmax(-1)
    counted = extra["completion_mask"].bool()
    assert torch.equal(argmax[counted], extra["completion_ids"][counted])


def test_pad_tokens_change_nothing(policy):
    """Pad ids on the left of prompts and after the stop token never reach a counted log-prob."""
    _perturb_lora(policy, seed=4)
    trajectory = policy.sample(PROMPTS, max_new_tokens=6, temperature=1.0, seed=2)
    extra = dict(trajectory.extra)
    garbage = dict(extra)
    garbage["prompt_ids"] = extra["prompt_ids"].masked_fill(extra["prompt_mask"] == 0, 17)
    garbage["completion_ids"] = extra["completion_ids"].masked_fill(extra["completion_mask"] == 0, 23)
    changed = (
        garbage["prompt_ids"].ne(extra["prompt_ids"]).any()
        or garbage["completion_ids"].ne(extra["completion_ids"]).any()
    )
    assert changed
    assert torch.allclose(policy.token_log_probs(garbage), policy.token_log_probs(extra), atol=1e-6)
    # and the GRPO loss on them is the same (padding positions are 0 and masked)
    advantages = torch.tensor([1.0, -0.5, 0.3])
    losses = [
        ppo_clip_loss(policy.token_log_probs(t), trajectory.log_probs, advantages, 0.2, t["completion_mask"])[
            0
        ]
        for t in (extra, garbage)
    ]
    assert torch.allclose(losses[0], losses[1], atol=1e-7)


def test_a_prompt_scores_the_same_alone_and_in_a_padded_batch(policy):
    _perturb_lora(policy, seed=5)
    batch = policy.sample(PROMPTS, max_new_tokens=5, temperature=1.0, seed=4)
    alone = {
        "prompt_ids": batch.extra["prompt_ids"][:1, batch.extra["prompt_mask"][0].bool()],
        "prompt_mask": torch.ones(1, int(batch.extra["prompt_mask"][0].sum()), dtype=torch.long),
        "completion_ids": batch.extra["completion_ids"][:1],
        "completion_mask": batch.extra["completion_mask"][:1],
    }
    assert torch.allclose(policy.token_log_probs(alone), batch.log_probs[:1], atol=1e-5)


def test_reference_is_the_model_with_the_lora_disabled(policy):
    _perturb_lora(policy, seed=6)
    trajectory = policy.sample(PROMPTS, max_new_tokens=5, temperature=1.0, seed=5)
    reference = policy.reference_log_probs(trajectory.extra)
    base = _naive_log_probs(policy.model.get_base_model(), trajectory.extra)  # LoRA still on here
    assert not torch.allclose(reference, base, atol=1e-3)
    with policy.model.disable_adapter():
        plain = _naive_log_probs(policy.model.get_base_model(), trajectory.extra)
    assert torch.allclose(reference, plain, atol=1e-5)


def test_fresh_lora_equals_the_base_model_and_only_lora_trains():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), seed=3)
    base = TextPolicy(model, tokenizer)
    trajectory = base.sample(PROMPTS, max_new_tokens=4, temperature=1.0, seed=0)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapted = TextPolicy(add_lora(model, rank=2), tokenizer)
    assert torch.equal(adapted.token_log_probs(trajectory.extra), trajectory.log_probs)  # B = 0 at the start
    names = list(adapted.named_parameters())
    assert names and all("lora_" in name for name in names)


def test_a_lora_on_the_output_head_is_refused():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer)).requires_grad_(False)
    with pytest.raises(ValueError, match="leave lm_head out of lora.target_modules"):
        TextPolicy(add_lora(model, target_modules=["q_proj", "lm_head"]), tokenizer)


def test_full_fine_tuning_keeps_a_frozen_reference_only_when_asked():
    policy = load_text_policy("tiny:llama", trainable="full", keep_reference=True)
    assert policy.reference_model is not None and not any(
        p.requires_grad for p in policy.reference_model.parameters()
    )
    assert len(policy.parameters()) == len(list(policy.model.parameters()))
    without = load_text_policy("tiny:llama", trainable="full")
    trajectory = without.sample(PROMPTS, max_new_tokens=3, temperature=1.0, seed=0)
    with pytest.raises(ValueError, match="needs LoRA"):
        without.reference_log_probs(trajectory.extra)


def test_encode_completions_appends_the_stop_token(policy):
    tokens = policy.encode_completions(["yes", "7 plus 3"])
    eos = policy.stop_ids[0]
    assert tokens["completion_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert tokens["completion_ids"][0, 1] == eos and tokens["completion_ids"][1, 3] == eos
    assert policy.decode(tokens["completion_ids"], tokens["completion_mask"]) == ["yes", "7 plus 3"]


def test_saved_lora_and_trainable_state_round_trip(policy, tmp_path):
    _perturb_lora(policy, seed=7)
    state = policy.trainable_state()
    policy.save_weights(tmp_path)
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    _perturb_lora(policy, seed=8)
    policy.load_trainable_state(state)
    assert all(torch.equal(p, state[n]) for n, p in policy.named_parameters().items())
    with pytest.raises(ValueError, match="checkpoint lacks"):
        policy.load_trainable_state({})


def test_unknown_model_names_fail_with_the_options():
    with pytest.raises(ValueError, match="give `smollm2`, `tiny:llama`, a hub id"):
        load_text_policy("/nonexistent/model-dir")
    with pytest.raises(ValueError, match="unknown trainable 'some'"):
        load_text_policy("tiny:llama", trainable="some")


def test_repeated_prompts_share_one_prompt_pass_with_the_same_values_and_gradients(policy):
    """GRPO groups repeat each prompt: it runs once and its cache serves every completion."""
    _perturb_lora(policy, seed=9)
    grouped = [p for p in PROMPTS for _ in range(3)]
    trajectory = policy.sample(grouped, max_new_tokens=5, temperature=1.0, seed=6)
    assert shared_prompts(trajectory.extra["prompt_ids"], trajectory.extra["prompt_mask"])[0].shape == (3,)
    naive = _naive_log_probs(policy.model, trajectory.extra)
    assert torch.allclose(trajectory.log_probs, naive, atol=1e-5)
    gradients = []
    for scorer in (policy.token_log_probs, lambda tokens: _naive_log_probs(policy.model, tokens)):
        for param in policy.parameters():
            param.grad = None
        (scorer(trajectory.extra) * torch.linspace(-1, 1, 5)).sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    relative = (gradients[0] - gradients[1]).norm() / gradients[1].norm()
    assert relative < 1e-4, relative  # fp32 rounding (3e-5 here; 3e-7 in float64); a cut graph: O(1)


def test_repeated_rows_backpropagate_the_same_bits_every_time_at_two_threads():
    """The shared prompt cache is expanded to each completion by repeat_rows: its forward is the
    plain copy, its backward the same sum as indexing's but in a fixed order. Plain indexing's
    scatter-add, at this size (a SmolLM2 prompt cache: 8 prompts x 4 completions, 3 key/value
    heads, 40 tokens, 64 channels) and two threads, gave about 20 different gradients in 30 calls,
    and the text demo's two runs drifted apart from the third epoch."""
    generator = torch.Generator().manual_seed(0)
    inverse = torch.arange(8).repeat_interleave(4)[torch.randperm(32, generator=generator)]
    x = torch.randn(8, 3, 40, 64, generator=generator, requires_grad=True)
    upstream = torch.randn(32, 3, 40, 64, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(repeat_rows(x, inverse), x[inverse])
        gradients = {
            torch.autograd.grad(repeat_rows(x, inverse), x, upstream)[0].numpy().tobytes() for _ in range(20)
        }
        indexed = torch.autograd.grad(x[inverse], x, upstream)[0]
    finally:
        torch.set_num_threads(threads)
    assert len(gradients) == 1
    gradient = torch.frombuffer(bytearray(gradients.pop()), dtype=torch.float32).view_as(x)
    assert torch.allclose(gradient, indexed, atol=1e-6, rtol=0)  # the same sum, up to its order


def test_greedy_generation_with_a_shared_prompt_cache_matches_one_prompt_at_a_time(policy):
    _perturb_lora(policy, seed=10)
    grouped = policy.sample([p for p in PROMPTS for _ in range(2)], max_new_tokens=6, temperature=0.0)
    for i, prompt in enumerate(PROMPTS):
        alone = policy.sample([prompt], max_new_tokens=6, temperature=0.0)
        for row in (2 * i, 2 * i + 1):
            assert grouped.extra["texts"][row] == alone.extra["texts"][0]


def test_activation_checkpointing_trains_in_train_mode_without_dropout():
    torch.manual_seed(0)
    checkpointed = load_text_policy(
        "tiny:llama", lora={"rank": 4, "dropout": 0.3}, gradient_checkpointing=True
    )
    torch.manual_seed(0)
    plain = load_text_policy("tiny:llama", lora={"rank": 4, "dropout": 0.3})
    assert checkpointed.model.training and not plain.model.training
    _perturb_lora(checkpointed, seed=11)
    plain.load_trainable_state(checkpointed.trainable_state())
    trajectory = plain.sample(
        [p for p in PROMPTS for _ in range(2)], max_new_tokens=4, temperature=1.0, seed=0
    )
    values = [p.token_log_probs(trajectory.extra) for p in (checkpointed, plain)]
    assert torch.allclose(values[0], values[1], atol=1e-5)  # no dropout, same numbers
    assert torch.allclose(checkpointed.token_log_probs(trajectory.extra), values[0])  # and repeatable
    values[0].sum().backward()
    assert all(p.grad is not None for p in checkpointed.parameters())
    assert checkpointed.model.training  # generation switched to eval mode and back
