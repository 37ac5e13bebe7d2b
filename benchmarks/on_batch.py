"""Does an update raise the reward of the very batch it trained on? A check for a recipe that loses.

    python benchmarks/on_batch.py CONFIG [--passes 20] [--negate] [key=value ...]

Samples one epoch's batch (epoch 0's prompts and seeds) and a second one (epoch 1's), trains on the
first alone for `--passes` passes of the recipe's optimiser steps, then samples both again at the same
prompts and seeds. Prints each batch's mean reward before and after, the paired change with its SE,
and the trained batch's change split by the sign of its advantages. A sound update raises the trained
batch's reward (the still toy's Flow-GRPO: +0.10 after 40 steps); where it does not, the loss gains
less from its signal than its step costs. `--negate` flips the advantages (policy-gradient recipes):
a signal in the gradient then shows as a larger fall. Every figure is one run of the recipe's seed.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def paired(before, after) -> str:
    from align.evaluate import paired_difference

    change, se = paired_difference({"outcomes": before.tolist()}, {"outcomes": after.tolist()})
    return f"{float(before.mean()):.3f} -> {float(after.mean()):.3f}  ({change:+.3f} +- {se:.3f})"


def on_batch(config, passes: int, negate: bool = False) -> dict:
    """{trained, next: (reward before [B], after [B]); advantages [B] or None; steps; skipped} for
    `passes` passes of the recipe's optimiser steps on epoch 0's batch alone. The reward is the recipe's
    weighted sum of its terms (a weight-0 term, watched only, counts for nothing)."""
    import torch

    from align.epochs import chunks, plan_epoch
    from align.loop import Run
    from rewards.combine import weighted_sum

    run = Run(config, tempfile.mkdtemp())

    def batch(epoch: int):
        plan = plan_epoch(run.prompts, config, epoch, 0, 1)
        return run.algorithm.collect(epoch, plan.prompts, plan.group_ids, plan.seeds)

    def reward(collected) -> torch.Tensor:  # the recipe's weighted reward, before any normalisation
        return weighted_sum(collected.values, run.rewards.weights)

    trained, other = batch(0), batch(1)
    before, other_before = reward(trained), reward(other)
    advantages = getattr(trained, "advantages", None)
    if negate:
        if advantages is None:
            raise ValueError(f"negate: {config.algorithm.name} has no advantages to flip")
        trained.advantages = advantages = -advantages
    generator = torch.Generator().manual_seed(config.train.seed)
    stats, skipped = {}, {}
    for _ in range(passes):  # the loop's own optimiser step, on this one batch
        for chunk in chunks(run.algorithm.micro_batches(trained, generator), config.train.steps_per_pass):
            run._optimiser_step(trained, chunk, stats, skipped)
    return {
        "trained": (before, reward(batch(0))),
        "next": (other_before, reward(batch(1))),
        "advantages": advantages,
        "steps": run.step,
        "skipped": skipped,
    }


def main() -> None:
    from align.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value, as `align train` takes them")
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--negate", action="store_true", help="flip the advantages' sign")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    try:
        result = on_batch(config, args.passes, args.negate)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    before, after = result["trained"]
    print(f"{config.model.name}, {config.algorithm.name}: {result['steps']} optimiser steps on one batch of {len(before)}")
    print(f"  trained batch, reward  {paired(before, after)}")
    print(f"  next batch, reward     {paired(*result['next'])}")
    advantages = result["advantages"]
    if advantages is not None and advantages.ndim == 1:
        change = after - before
        for name, rows in (("positive", advantages > 0), ("negative", advantages < 0)):
            print(f"  trained samples with {name} advantage: {float(change[rows].mean()):+.3f}")
    if result["skipped"]:
        print(f"  skipped steps: {result['skipped']}")


if __name__ == "__main__":
    main()
