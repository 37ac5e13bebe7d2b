"""A tiny random Llama and a word-level tokenizer built in code, for tests and `tiny:llama`.

The tokenizer splits on whitespace and punctuation and reads digits one at a time, so arithmetic
prompts tokenize; words outside its list become <unk>. It carries a chat template (role tags as
special tokens) so the templated path is exercised; `chat_template=False` leaves it plain.
"""

from __future__ import annotations

import torch

SPECIAL = ["<pad>", "<eos>", "<unk>", "<system>", "<user>", "<assistant>"]
WORDS = [
    "what",
    "is",
    "plus",
    "minus",
    "times",
    "the",
    "answer",
    "number",
    "only",
    "reply",
    "with",
    "a",
    "yes",
    "no",
    "good",
    "bad",
    "happy",
    "sad",
    "great",
    "terrible",
    "movie",
    "film",
    "day",
    "love",
    "hate",
    "cat",
    "dog",
    "red",
    "blue",
    "green",
    "it",
    "was",
    "very",
    "not",
    "and",
    "or",
    "=",
    "+",
    "-",
    "?",
    ".",
    ",",
    ":",
    "!",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_tokenizer(words: list[str] = WORDS, chat_template: bool = True):
    """A PreTrainedTokenizerFast: pad 0, eos 1, unk 2, role tags, digits 0-9, then `words`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for token in [str(d) for d in range(10)] + list(words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(True)]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word pieces with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[3:],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(vocab_size: int, seed: int = 0, hidden_size: int = 32, layers: int = 2, tie: bool = False):
    """A seeded random LlamaForCausalLM: 4 heads (2 KV heads), rope, RMSNorm, SwiGLU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=tie,
        initializer_range=0.1,  # larger than usual: a LoRA can then move the frozen head's logits far
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()
