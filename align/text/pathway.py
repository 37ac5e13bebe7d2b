"""A training run for text: the loop's `Run` with a text policy, text prompts and text evaluation.

Everything per epoch (collect, micro-batches, backward, clipping, optimiser, EMA, metrics) is the
loop's own `Run.train_epoch`; only construction and evaluation differ from images. The model is
`config.model.name` (`smollm2`, `tiny:llama`, a hub id or a directory); prompts are a text task
split (`arithmetic:train`) or a .txt/.jsonl file; the text settings are the algorithm's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from align.config import ExperimentConfig
from align.loop import EMA, Run, make_accelerator


class TextRun(Run):
    def __init__(self, config: ExperimentConfig, out: Path, accelerator=None):
        from align.algorithms.base import ALGORITHMS, Context
        from align.text import grpo, preference  # noqa: F401  (register the text algorithms)
        from align.text.data import load_text_prompts
        from align.text.models import load_text_policy
        from align.text.settings import policy_options
        from rewards.combine import RewardSet

        self.config, self.out = config, Path(out)
        self.accelerator = accelerator or make_accelerator(config.train.mixed_precision)
        device = self.accelerator.device
        torch.manual_seed(config.train.seed)  # same LoRA init on every process
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
        self.adapter = self.policy
        terms = [(t.name, t.weight, t.args) for t in config.rewards.terms]
        if not terms:
            raise ValueError("rewards.terms is empty: give at least one reward to optimise")
        self.rewards = RewardSet(terms, normalise=config.rewards.normalise, device=str(device))
        self.context = Context(config, self.policy, self.policy, self.rewards, self.accelerator)
        self.algorithm = ALGORITHMS.lookup(config.algorithm.name)(self.context)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
        )
        self.network, self.optimizer = self.accelerator.prepare(self.policy.model, self.optimizer)
        self.policy.network = self.network
        self.ema = (
            EMA(self.policy.named_parameters(), config.train.ema_decay) if config.train.ema_decay else None
        )
        self.prompts = load_text_prompts(config.train.prompts)
        self.eval_prompts = load_text_prompts(config.eval.prompts)[: config.eval.max_prompts]
        self.epoch = 0
        self.step = 0
        self.summary: dict = {}

    @torch.no_grad()
    def evaluate(self) -> dict:
        from align.text.evaluate import eval_references, evaluate_text

        settings = self.config.algorithm
        saved = None
        if self.ema is not None:
            saved = self.policy.trainable_state()
            self.policy.load_trainable_state(self.ema.shadow)
        try:
            with self.accelerator.autocast():
                summary = evaluate_text(
                    self.policy,
                    self.eval_prompts,
                    max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens,
                    references=eval_references(self.config.eval.prompts),
                    rewards=self.rewards,
                )
        finally:
            if saved is not None:
                self.policy.load_trainable_state(saved)
        summary["epoch"] = self.epoch
        return summary
