"""Token log-prob memory and time: chunked and cut-cross-entropy against naive full logits; and one
GRPO step of this library against TRL's GRPOTrainer on the same model, prompts and settings.

    python benchmarks/text_logprob.py [--lengths 256 512 1024 2048] [--batch 1] [--vocab 49152]
                                      [--hidden 576] [--chunk 512] [--grpo]

Each log-prob setting runs forward + backward (hidden states and, optionally, the head trainable)
in a fresh subprocess and reports the peak memory growth over the inputs (CPU: peak resident set;
CUDA: torch.cuda.max_memory_allocated) and the wall time. Vocabulary 49,152 and hidden size 576 are
SmolLM2-135M's. `--grpo` times one GRPO step (sampling, rewards, loss, backward, optimiser step)
on SmolLM2 with LoRA here, then with TRL's GRPOTrainer if trl (and datasets) are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = r"""
import json, resource, sys, time, torch
from align.text.logprob import token_log_probs
method, rows, vocab, hidden, chunk, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
generator = torch.Generator().manual_seed(0)
h = torch.randn(rows, hidden, generator=generator).to(device).requires_grad_()
w = (torch.randn(vocab, hidden, generator=generator) / hidden**0.5).to(device)
targets = torch.randint(0, vocab, (rows,), generator=generator).to(device)
cuda = device == "cuda"
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.max_memory_allocated()
else:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
token_log_probs(h, w, targets, backend=method, chunk_size=chunk).sum().backward()
if cuda:
    torch.cuda.synchronize(); after = torch.cuda.max_memory_allocated()
else:
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": (after - before) / 2**20}))
"""


def measure(method: str, rows: int, vocab: int, hidden: int, chunk: int, device: str) -> dict:
    args = [sys.executable, "-c", CHILD, method, str(rows), str(vocab), str(hidden), str(chunk), device]
    out = subprocess.run(args, capture_output=True, text=True, env={**os.environ})
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def logprob_table(args) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    methods = ["naive", "chunked", "cce"]
    print(
        f"token log-prob forward+backward, vocab {args.vocab}, hidden {args.hidden}, batch {args.batch}, {device}"
    )
    print(f"{'tokens':>7}" + "".join(f"{m + ' MB':>14}{m + ' s':>12}" for m in methods))
    for length in args.lengths:
        rows = length * args.batch
        cells = []
        for method in methods:
            result = measure(method, rows, args.vocab, args.hidden, args.chunk, device)
            cells.append(
                f"{'error':>14}{'':>12}"
                if "error" in result
                else f"{result['peak_mb']:>14.0f}{result['seconds']:>12.2f}"
            )
        print(f"{length:>7}" + "".join(cells), flush=True)


GRPO_SETTINGS = {
    "prompts": 4,
    "group_size": 8,
    "max_new_tokens": 8,
    "temperature": 1.0,
    "lr": 5e-4,
    "rank": 16,
}


def ours_grpo_step() -> float:
    from align.loop import Run
    from align.text.demo import demo_config

    settings = GRPO_SETTINGS
    config = demo_config()
    config.train.batch_size = settings["prompts"] * settings["group_size"]
    config.train.group_size = settings["group_size"]
    config.train.micro_batch_size = config.train.batch_size
    config.train.mixed_precision = "no"
    config.algorithm.temperature = settings["temperature"]
    config.train.lr = settings["lr"]
    run = Run(config, "unused")
    run.train_epoch()  # warm-up (first-call overheads)
    start = time.perf_counter()
    run.train_epoch()
    return time.perf_counter() - start


def trl_grpo_step() -> float | str:
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as error:
        return f"skipped: {error.name} is not installed (pip install trl datasets)"
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from align.text.models import smollm2_directory
    from rewards.base import build_reward
    from rewards.text.tasks import task_problems

    settings = GRPO_SETTINGS
    directory = str(smollm2_directory())
    problems = task_problems("arithmetic:train")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}]} for p in problems])
    reward = build_reward("text-numeric", references="arithmetic")

    def numeric(completions, prompts, **kwargs):
        texts = [c[-1]["content"] for c in completions]
        return reward(texts, [p[-1]["content"] for p in prompts]).tolist()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.starts, self.seconds = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.starts[-1])

    batch = settings["prompts"] * settings["group_size"]
    arguments = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-benchmark-"),
        learning_rate=settings["lr"],
        per_device_train_batch_size=batch,
        num_generations=settings["group_size"],
        max_completion_length=settings["max_new_tokens"],
        temperature=settings["temperature"],
        beta=0.0,
        max_steps=2,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(directory),
        reward_funcs=[numeric],
        args=arguments,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(directory, padding_side="left"),
        peft_config=LoraConfig(
            r=settings["rank"], lora_alpha=2 * settings["rank"], target_modules="all-linear"
        ),
        callbacks=[timer],
    )
    trainer.train()
    return timer.seconds[-1]  # the second step (the first pays the warm-up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1, help="sequences; tokens = length x batch")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk", type=int, default=512, help="rows of logits per chunk")
    parser.add_argument("--grpo", action="store_true", help="also time one GRPO step here and in TRL")
    args = parser.parse_args()
    logprob_table(args)
    if args.grpo:
        print(f"one GRPO step on SmolLM2-135M, LoRA, {json.dumps(GRPO_SETTINGS)}")
        print(f"  diffusion-align: {ours_grpo_step():.1f} s")
        result = trl_grpo_step()
        print(
            f"  TRL GRPOTrainer: {result:.1f} s"
            if isinstance(result, float)
            else f"  TRL GRPOTrainer: {result}"
        )


if __name__ == "__main__":
    main()
