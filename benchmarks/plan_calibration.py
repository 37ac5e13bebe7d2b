"""`align plan` against the memory a run really reaches, on tiny and toy recipes this CPU can run.

    python benchmarks/plan_calibration.py

For each recipe: the plan (traced on the meta device, align/planner.py) and the high-water mark of
tensor memory in the second epoch of a real run of it (align/memory.measured_epoch_peak, the count
torch.cuda.max_memory_allocated makes on a GPU), and plan / measured. One torch thread.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASE = {
    "algorithm": {"name": "flow-grpo"},
    "rewards": {"terms": [{"name": "jpeg-compressibility"}]},
    "sampling": {"num_steps": 10},
    "logging": {"tensorboard": False, "progress": False},
}
RECIPES = {  # name -> (model, train, algorithm)
    "tiny:sd3 LoRA, KL": ({"name": "tiny:sd3"}, {"micro_batch_size": 8}, None),
    "tiny:sd3 full": ({"name": "tiny:sd3"}, {"micro_batch_size": 8, "trainable": "full"}, {"beta": 0}),
    "tiny:sd3 LoRA, checkpointed": ({"name": "tiny:sd3", "gradient_checkpointing": True}, {"micro_batch_size": 8}, None),
    "toy LoRA, checkpointed": ({"name": "toy", "gradient_checkpointing": True}, {"batch_size": 16, "micro_batch_size": 8}, None),
    "toy LoRA, micro-batch 4": ({"name": "toy"}, {"batch_size": 16, "micro_batch_size": 4}, None),
    "tiny:flux LoRA": ({"name": "tiny:flux"}, {"micro_batch_size": 4}, None),
    "tiny:sdxl LoRA": ({"name": "tiny:sdxl"}, {"micro_batch_size": 4}, None),
    "tiny:sd15 DDPO (sampling graph kept)": ({"name": "tiny:sd15"}, {"micro_batch_size": 4}, {"name": "ddpo"}),
}


def recipe(name: str):
    """The config of one of RECIPES (batch 8 unless it says, groups of 4, 10 steps)."""
    from align.config import config_from_data

    model, train, algorithm = RECIPES[name]
    data = {**BASE, "model": model, "train": {"batch_size": 8, "group_size": 4, **train}}
    data["algorithm"] = {**BASE["algorithm"], **(algorithm or {})}
    return config_from_data(data)


def planned_and_measured(config) -> tuple[int, int]:
    """(the plan's bytes on one GPU, the high-water mark of the recipe's second epoch run here)."""
    from align.loop import Run
    from align.memory import measured_epoch_peak
    from align.planner import footprint, trace

    planned = footprint(trace(config), config, 1, "ddp").total
    with tempfile.TemporaryDirectory() as out:
        return planned, measured_epoch_peak(Run(config, out))["peak"]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    print(f"{'recipe (batch 8 unless said, 10 steps)':<40}{'plan MB':>10}{'measured MB':>13}{'plan/measured':>15}")
    for name in RECIPES:
        planned, measured = planned_and_measured(recipe(name))
        print(f"{name:<40}{planned / 2**20:>10.2f}{measured / 2**20:>13.2f}{planned / measured:>15.2f}", flush=True)

if __name__ == "__main__":
    main()
