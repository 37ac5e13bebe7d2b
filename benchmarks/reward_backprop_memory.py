"""Peak memory of reward backprop against the number of denoising steps, with and without
activation checkpointing (denoiser per step and VAE decoder).

    python benchmarks/reward_backprop_memory.py [--model tiny:sd3] [--steps 4 8 16 32] [--batch 4]

Full backprop through every step (AlignProp with K = T). Peak memory is the CPU process's peak
resident set growth measured in a fresh subprocess per setting (on CUDA: torch.cuda.max_memory_allocated).
With checkpointing the growth should stay nearly flat in the number of steps; without, grow linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = r"""
import json, resource, sys, torch
from samplers.models import load_adapter
from samplers.noise import generators_from_seeds
model, steps, batch, checkpoint = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
adapter = load_adapter(model, resolution=int(sys.argv[5]) if len(sys.argv) > 5 else None)
prompts = ["a red circle"] * batch
noise = adapter.initial_noise(generators_from_seeds(list(range(batch))), batch, steps).requires_grad_(True)
adapter.encode(prompts)
torch.set_grad_enabled(True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trajectory = adapter.sample(prompts, None, num_steps=steps, noise=noise, grad_steps=steps, checkpoint=checkpoint)
latents = trajectory.final
if checkpoint:
    images = torch.utils.checkpoint.checkpoint(adapter.decode, latents, use_reentrant=False)
else:
    images = adapter.decode(latents)
images.mean().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_mb": (after - before) / 1024}))
"""


def measure(model: str, steps: int, batch: int, checkpoint: bool, resolution: int | None) -> float:
    args = [sys.executable, "-c", CHILD, model, str(steps), str(batch), "1" if checkpoint else "0"]
    if resolution:
        args.append(str(resolution))
    out = subprocess.run(
        args, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:sd3")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128, help="pixels (a larger image shows the trend)")
    args = parser.parse_args()
    print(
        f"{args.model} at {args.resolution} px, batch {args.batch}: peak memory growth of one backward (MB)"
    )
    print(f"{'steps':>6}{'checkpointed':>14}{'plain':>10}{'plain / ckpt':>14}")
    for steps in args.steps:
        with_ckpt = measure(args.model, steps, args.batch, True, args.resolution)
        without = measure(args.model, steps, args.batch, False, args.resolution)
        print(f"{steps:>6}{with_ckpt:>14.1f}{without:>10.1f}{without / max(with_ckpt, 1e-6):>14.2f}")


if __name__ == "__main__":
    main()
