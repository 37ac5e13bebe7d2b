"""The text modality of the loop's Run: a causal LM with a LoRA (or full fine-tuning), text prompts and
greedy text evaluation. The model is `config.model.name` (`smollm2`, `tiny:llama`, a hub id or a
directory); prompts are a text task split (`arithmetic:train`) or a .txt/.jsonl file; the text
settings (max_new_tokens, temperature, ...) are the algorithm's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from align.text.evaluate import evaluate_text, format_text_summary


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

    @staticmethod
    def difficulties(source: str) -> list[float]:
        from align.text.data import load_prompt_difficulties

        return load_prompt_difficulties(source)

    def evaluate(self, run) -> dict:
        from align.text.evaluate import eval_references

        settings = run.config.algorithm
        with run.accelerator.autocast():
            return evaluate_text(
                self.policy,
                self.eval_prompts,
                max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens,
                references=eval_references(run.config.eval.prompts),
                rewards=run.rewards,
            )

    def warm_start(self, run) -> dict | None:
        """Before the first epoch: rejection-sampling fine-tuning where the algorithm asks for it
        (align/text/rft.py), then the KL anchor moved to the fine-tuned weights; its statistics, or None."""
        from align.text.rft import rejection_sampling_fine_tune

        stats = rejection_sampling_fine_tune(run)
        if stats is not None:
            self.policy.anchor_reference()
        return stats

    @staticmethod
    def checkpoint_settings(config) -> dict:
        return {"dtype": config.model.dtype}

    @staticmethod
    def evaluate_model(args) -> dict:
        """`align evaluate` on a text model: greedy answers to `args.prompts`, accuracy where the
        prompts have references, and each `args.reward` (text rewards) averaged."""
        from align.text.evaluate import eval_references
        from rewards.combine import RewardSet
        from samplers.devices import resolve_device

        image_only = {
            "--swap-test": args.swap_test,
            "--steps": args.steps,
            "--guidance-scale": args.guidance_scale,
        }
        given = [flag for flag, value in image_only.items() if value]
        if given:
            raise ValueError(f"only image models take {', '.join(given)}; {args.model} is a text model")
        device = resolve_device(args.device)
        policy, settings = load_evaluated_policy(args.model, device=str(device), dtype=args.dtype)
        prompts = TextModality.prompts(args.prompts)[: args.max_prompts]
        rewards = (
            RewardSet([(name, 1.0, {}) for name in args.reward], device=str(device)) if args.reward else None
        )
        summary = evaluate_text(
            policy,
            prompts,
            max_new_tokens=args.max_new_tokens or settings.eval_max_new_tokens or settings.max_new_tokens,
            references=eval_references(args.prompts),
            rewards=rewards,
        )
        summary.update(model=args.model, prompts=args.prompts)
        print(
            format_text_summary(summary, f"{args.model} on {args.prompts} ({len(prompts)} prompts, greedy)")
        )
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def load_evaluated_policy(name: str, *, device: str, dtype: str):
    """(TextPolicy, text settings) for a model name, or for a text run directory or one of its
    checkpoints: the run's base model with the checkpoint's weights, prompted as the run prompted it
    (its system prompt, chat template and evaluation budget), in the run's dtype where `dtype` is auto."""
    from align.config import config_from_data
    from align.runs import read_config, resolve_checkpoint, verify_if_manifested
    from align.text.models import load_text_model
    from align.text.policy import TextPolicy
    from align.text.settings import TextGRPOConfig, policy_options

    found = resolve_checkpoint(name)
    settings, seed, base, checkpoint = TextGRPOConfig(), 0, name, None
    if found is not None:
        base, checkpoint, adapter = found
        run_dir = checkpoint.parent.parent
        config = config_from_data(read_config(run_dir))
        settings, seed = config.algorithm, config.train.seed
        dtype = adapter.get("dtype", "float32") if dtype == "auto" else dtype
    dtype = "float32" if dtype == "auto" else dtype
    lora = None
    if checkpoint is not None:
        verify_if_manifested(checkpoint)
        if (checkpoint / "model").is_dir():  # full fine-tuning: the whole model was saved
            base = str(checkpoint / "model")
        elif (checkpoint / "lora").is_dir():
            lora = checkpoint / "lora"
        else:
            raise ValueError(f"checkpoint {checkpoint} holds neither lora/ nor model/ weights")
    model, tokenizer = load_text_model(base, dtype=dtype, device=device, seed=seed)
    if lora is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(lora)).to(device)
    return TextPolicy(model.eval(), tokenizer, **policy_options(settings)), settings
