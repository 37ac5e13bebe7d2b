"""What a run trains, samples from, prompts and measures, per modality; the loop's Run is built from one.

A modality has `adapter` (what an algorithm samples from: an image adapter, or the text policy itself),
`policy` (what training changes: parameters, trainable state, weights on disk, the reference),
`prompts(source)` (a prompt source by name), `evaluate(run)` (forward-only, under the current weights)
and `checkpoint_settings(config)` (how to sample a checkpoint again). An algorithm names its modality
(`Algorithm.modality`): images by default, `align.text.modality.TextModality` for the text algorithms.
"""

from __future__ import annotations

from pathlib import Path

import torch

from align.evaluate import format_summary


class ImageModality:
    """A diffusion or flow-matching model (`model.name`) with a LoRA or full fine-tuning; toy-world
    splits or prompt files; fixed-seed evaluation with the training and the extra eval rewards."""

    format_summary = staticmethod(format_summary)
    shardable = True

    def __init__(self, config, device: torch.device):
        from align.policy import ImagePolicy
        from align.runs import load_model

        model = config.model
        self.adapter = load_model(
            model.name,
            family=model.family,
            dtype=model.dtype,
            device=str(device),
            guidance_scale=model.guidance_scale,
            resolution=model.resolution,
            frames=model.frames,
            attention=model.attention,
            gradient_checkpointing=model.gradient_checkpointing,
        )
        self.adapter.step_kernel = config.sampling.step_kernel
        self.adapter.noise = config.sampling.noise
        if self.adapter.family == "flow":
            self.adapter.sde = config.sampling.sde
        elif config.sampling.sde != "flow-grpo":
            raise ValueError(
                f"sampling.sde={config.sampling.sde} steps flow models; a {self.adapter.family} model samples by DDIM"
            )
        self.policy = ImagePolicy(self.adapter, config.train.trainable, config.lora)

    @staticmethod
    def prompts(source: str) -> list[str]:
        from align.recipes import load_prompts

        return load_prompts(source)

    def evaluate(self, run) -> dict:
        from align.evaluate import evaluate
        from rewards.base import build_reward

        config = run.config
        prompts = self.prompts(config.eval.prompts)[: config.eval.max_prompts]
        names = list(dict.fromkeys([*run.rewards.names, *config.eval.rewards]))
        extra = {n: build_reward(n) for n in names if n not in run.rewards.rewards}
        rewards = {n: run.rewards.rewards.get(n) or extra[n] for n in names}
        network, self.adapter.network = self.adapter.network, None  # forward-only: no distributed wrapper
        try:
            summary, _, _ = evaluate(
                self.adapter,
                prompts,
                seeds=config.eval.seeds,
                rewards=rewards,
                num_steps=config.sampling.eval_num_steps,
            )
            if config.eval.kl_seeds:
                summary["kl"], summary["kl_se"] = self.path_kl(run, prompts) if run.epoch else (0.0, 0.0)
        finally:
            self.adapter.network = network
        return summary

    def path_kl(self, run, prompts: list[str]) -> tuple[float, float]:
        """KL from the base of the policy's SDE path on the evaluation prompts (align/goodhart.py)."""
        from align.goodhart import path_kl

        sampling = run.config.sampling
        seeds = run.config.eval.kl_seeds
        return path_kl(self.adapter, self.policy, prompts, seeds, sampling.num_steps, sampling.noise_level)

    @staticmethod
    def evaluate_model(args) -> dict:
        """`align evaluate` on an image model: fixed seeds, the toy verifier where the prompts are the
        toy world's, each `args.reward` averaged; with --swap-test, the relation-word test too (for a video
        model, the direction-word test)."""
        from align.evaluate import evaluate, format_rows, format_swap_test, swap_test, write_evaluation
        from align.runs import load_model
        from rewards.base import build_reward
        from samplers.devices import resolve_device

        if args.max_new_tokens is not None:
            raise ValueError(f"only text models take --max-new-tokens; {args.model} is an image model")
        device = resolve_device(args.device)
        prompts = ImageModality.prompts(args.prompts)[: args.max_prompts]
        rewards = {name: build_reward(name, device=device) for name in args.reward}
        adapter = load_model(
            args.model,
            device=device,
            dtype=args.dtype,
            guidance_scale=args.guidance_scale,
            default_steps=args.steps,
        )
        summary, rows, _ = evaluate(adapter, prompts, seeds=args.seeds, rewards=rewards)
        summary.update(model=args.model, prompts=args.prompts)
        print(format_rows(rows))
        print(format_summary(summary, f"{args.model} on {args.prompts} ({summary['num_images']} images)"))
        if args.swap_test:
            if getattr(adapter, "frames", None):  # a video model: the direction words instead
                from align.toy.video import direction_swap_test

                summary["swap_test"] = direction_swap_test(adapter, prompts, seeds=args.seeds)
            else:
                summary["swap_test"] = swap_test(adapter, prompts, seeds=args.seeds)
            print(format_swap_test(summary["swap_test"]))
        if args.out:
            write_evaluation(Path(args.out), summary, rows)
        return summary

    def checkpoint_settings(self, config) -> dict:
        return {
            "family": config.model.family if config.model.family != "auto" else None,
            "guidance_scale": self.adapter.guidance_scale,
            "resolution": self.adapter.resolution,
            "frames": getattr(self.adapter, "frames", None),
            "dtype": config.model.dtype,
        }
