"""Rollout-with-log-probs cost against a plain diffusers pipeline call, and one Flow-GRPO epoch split.

    python benchmarks/rollout_vs_pipeline.py [--model tiny:sd3] [--steps 10] [--batch 8] [--repeats 5]

Prints (1) seconds per call of the plain pipeline, our ODE rollout + decode and our SDE rollout with
log-probs + decode, for the same prompts, seeds, steps and guidance, with ratios against the
pipeline measured in the same run (target: <= 1.10x). The pipeline is handed the same cached prompt
encodings the rollout uses (the fair base); the pipeline encoding its own prompts is a row beside it; (2) one Flow-GRPO epoch on the same model,
split into sampling, reward and training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(function, repeats: int) -> float:
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    import torch

    from samplers.models import load_adapter
    from samplers.noise import generators_from_seeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:sd3")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    adapter = load_adapter(args.model)
    prompts = [f"prompt {i}" for i in range(args.batch)]
    from align.recipes import load_prompts

    prompts = (load_prompts("heldout") * 4)[: args.batch]
    seeds = list(range(args.batch))

    cond = adapter.encode(prompts)  # cached: the rollout does not re-encode, so neither does the pipeline

    @torch.no_grad()
    def pipeline():
        adapter.pipeline_images(prompts, generators_from_seeds(seeds), args.steps, cond=cond)

    @torch.no_grad()
    def pipeline_encoding():
        adapter.pipeline_images(prompts, generators_from_seeds(seeds), args.steps)

    @torch.no_grad()
    def ode():
        adapter.decode(adapter.sample(prompts, generators_from_seeds(seeds), num_steps=args.steps).final)

    def sde(kernel: str):
        @torch.no_grad()
        def run():
            adapter.step_kernel = kernel
            trajectory = adapter.sample(
                prompts, generators_from_seeds(seeds), num_steps=args.steps, noise_levels=0.7
            )
            adapter.decode(trajectory.final)

        return run

    base = timed(pipeline, args.repeats)
    rows = [
        ("diffusers pipeline, given the encodings", base),
        ("diffusers pipeline, encoding its prompts", timed(pipeline_encoding, args.repeats)),
        ("ODE rollout + decode", timed(ode, args.repeats)),
        ("SDE rollout with log-probs + decode", timed(sde("family"), args.repeats)),
        ("  the same, fused step (sampling.step_kernel)", timed(sde("fused"), args.repeats)),
        ("  the same, compiled fused step", timed(sde("compiled"), args.repeats)),
    ]
    adapter.step_kernel = "family"
    print(f"{args.model}, {args.steps} steps, batch {args.batch}, median of {args.repeats}")
    print(f"{'':<46}{'seconds':>10}{'ratio':>8}")
    for name, seconds in rows:
        print(f"{name:<46}{seconds:>10.4f}{seconds / base:>8.3f}")
    epoch_split(args)


def epoch_split(args) -> None:
    from align.config import config_from_data
    from align.loop import Run

    reward = "geneval-toy" if args.model == "toy" else "jpeg-compressibility"
    config = config_from_data(
        {
            "model": {"name": args.model},
            "algorithm": {"name": "flow-grpo"},
            "rewards": {"terms": [{"name": reward}]},
            "sampling": {"num_steps": args.steps, "noise_level": 0.7},
            "train": {"batch_size": args.batch * 2, "group_size": 4, "micro_batch_size": args.batch},
            "logging": {"tensorboard": False, "progress": False},
        }
    )
    with tempfile.TemporaryDirectory() as out:
        run = Run(config, out)
        run.train_epoch()  # warm-up
        record = run.train_epoch()
    total = record["time/epoch"]
    print(
        f"\none Flow-GRPO epoch ({args.batch * 2} samples, {args.steps} steps, reward {reward}): {total:.3f} s"
    )
    for part in ("sampling", "reward", "training"):
        seconds = record[f"time/{part}"]
        print(f"  {part:<10}{seconds:>8.3f} s  {seconds / total:>6.1%}")


if __name__ == "__main__":
    main()
