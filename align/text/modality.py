"""The text modality of the loop's Run: a causal LM with a LoRA (or full fine-tuning), text prompts and
greedy text evaluation. The model is `config.model.name` (`smollm2`, `tiny:llama`, a hub id or a
directory); prompts are a text task split (`arithmetic:train`) or a .txt/.jsonl file; the text
settings (max_new_tokens, temperature, ...) are the algorithm's.
"""

from __future__ import annotations

import torch

from align.text.evaluate import format_text_summary


class TextModality:
    format_summary = staticmethod(format_text_summary)
    # a sampled completion stops when its rows end, so processes would run different numbers of
    # forwards, each a collective under FSDP2: text runs replicate the model (DDP)
    shardable = False

    def __init__(self, config, device: torch.device):
        from align.text.models import load_text_policy
        from align.text.settings import policy_options

        lora = config.lora
        self.policy = load_text_policy(
            config.model.name,
            trainable=config.train.trainable,
            lora={
                "rank": lora.rank,
                "alpha": lora.alpha,
                "dropout": lora.dropout,
                "target_modules": lora.target_modules,
            },
            dtype=config.model.dtype,
            device=str(device),
            gradient_checkpointing=config.model.gradient_checkpointing,
            seed=config.train.seed,
            keep_reference=config.train.trainable == "full",
            **policy_options(config.algorithm),
        )
        self.adapter = self.policy  # text algorithms sample from the policy itself
        self.eval_prompts = self.prompts(config.eval.prompts)[: config.eval.max_prompts]

    @staticmethod
    def prompts(source: str) -> list[str]:
        from align.text.data import load_text_prompts

        return load_text_prompts(source)

    def evaluate(self, run) -> dict:
        from align.text.evaluate import eval_references, evaluate_text

        settings = run.config.algorithm
        with run.accelerator.autocast():
            return evaluate_text(
                self.policy,
                self.eval_prompts,
                max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens,
                references=eval_references(run.config.eval.prompts),
                rewards=run.rewards,
            )

    @staticmethod
    def checkpoint_settings(config) -> dict:
        return {"dtype": config.model.dtype}
