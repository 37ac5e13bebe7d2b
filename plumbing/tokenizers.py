"""Tokenizers built in code (no hub): CLIP-style and T5-style (Unigram).

Every character is a token, and each word of `words` becomes a single token, so small models
see whole words of their prompt grammar while any text still tokenizes.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer, T5Tokenizer

DEFAULT_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "and",
    "with",
    "on",
    "in",
    "photo",
    "picture",
    "painting",
    "cat",
    "dog",
    "car",
    "house",
    "tree",
    "flower",
    "person",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "circle",
    "square",
    "triangle",
    "one",
    "two",
    "three",
    "four",
    "left",
    "right",
    "above",
    "below",
]

PRINTABLE = [chr(c) for c in range(33, 127)]


def clip_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 32, leading: Iterable[str] = ()
) -> CLIPTokenizer:
    """A CLIP tokenizer whose base vocabulary is every printable character (plain and word-final,
    no merges) and in which each word of `words` is one added whole-word token. `leading` tokens take
    the first ids, before start and end of text (OWL reads a query whose first id is 0 as padding).

    Deterministic: the ids depend only on `words` (BPE training breaks ties differently from one
    process to the next, and hand-written merge chains interfere: the "r e" of "red" splits "three").
    """
    from tokenizers import AddedToken

    vocab: dict[str, int] = {token: i for i, token in enumerate(leading)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    for char in PRINTABLE:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    unique = [w for w in dict.fromkeys(w.lower() for w in words) if w not in vocab]
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in unique])
    return tokenizer


def t5_tokenizer(words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 32) -> T5Tokenizer:
    """A T5-style Unigram tokenizer: pad 0, eos 1, unk 2; whole words preferred over characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(char, -8.0) for char in PRINTABLE]
    pieces += [("\u2581" + word.lower(), -1.0) for word in dict.fromkeys(words)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
