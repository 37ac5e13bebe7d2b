"""The peer side of vs_peers.py's text cases: trl 1.16's GRPOTrainer, timed per optimiser step, on a
tiny Llama this script builds in code or on any causal-LM directory (SmolLM2-135M-Instruct).

Runs in the virtualenv of trl-1.16.txt (vs_peers.py makes it), never in ours:

    python trl_text.py --build-only --model-dir DIR         # the tiny Llama and its tokenizer
    python trl_text.py --model-dir DIR --steps 30 --warmup 5 [--no-grad-ckpt]

Prints `CONFIG {json}` and `RESULT {json}`: the median seconds of the steps after the warm-up and
each step's. The settings both sides share: 8 prompts, 2 of them a step with 4 completions each
(a batch of 8), 32 new tokens at temperature 1, no KL (beta 0), the PPO clip 0.2, advantages
standardised within each group, token losses averaged over the batch's tokens (trl's default `dapo`,
ours `normalisation: token`), full fine-tuning at lr 1e-5 with AdamW (no weight decay), gradients
clipped at 1, activation checkpointing unless --no-grad-ckpt. The reward: -|len - 40| / 40, plus 1
when the answer says "cat".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = [  # vs_peers.py gives ours these too
    "Tell me about a cat",
    "Write a story about a dog",
    "Describe the weather today",
    "What do tiny models do",
    "Say something about birds",
    "The quick brown fox",
    "Explain reinforcement learning",
    "Once upon a time",
]
WORDS = ["the", "a", "cat", "dog", "bird", "fox", "weather", "story", "time", "once", "upon", "about", "say"]


def build(model_dir: Path) -> None:
    """A 2-layer Llama (hidden 64) with a word-level tokenizer over the prompts' words and a few more."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = sorted({w.lower() for p in PROMPTS for w in p.split()} | set(WORDS) | {".", ",", "!", "?"})
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    LlamaForCausalLM(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))


def length_keyword(completions, **_) -> list[float]:
    return [-abs(len(text) - 40) / 40.0 + (1.0 if "cat" in text else 0.0) for text in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.build_only:
        build(Path(args.model_dir))
        return
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        config = GRPOConfig(
            output_dir=scratch,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=32,
            temperature=1.0,
            beta=0.0,
            epsilon=0.2,
            learning_rate=1e-5,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=args.steps,
            gradient_checkpointing=args.grad_ckpt,
            use_cpu=True,
            bf16=False,
            report_to=[],
            save_strategy="no",
            logging_steps=10**9,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=args.model_dir,
            reward_funcs=length_keyword,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS * max(1, args.steps)}),
            callbacks=[StepTimer()],
        )
        settings = {
            k: getattr(config, k)
            for k in (
                "per_device_train_batch_size",
                "num_generations",
                "max_completion_length",
                "temperature",
                "beta",
                "epsilon",
                "learning_rate",
                "loss_type",
                "scale_rewards",
                "gradient_checkpointing",
                "steps_per_generation",
            )
        }
        settings |= {"model": args.model_dir, "threads": torch.get_num_threads()}
        print("CONFIG " + json.dumps(settings, default=str), flush=True)
        trainer.train()
    result = {"sec_per_step_median": statistics.median(times[args.warmup :]), "sec_per_step_all": times}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
