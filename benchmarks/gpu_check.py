"""The checks that need a CUDA GPU, in one table; run by hand (`make gpu-check`), about 8 minutes on one GPU.

    python benchmarks/gpu_check.py [--dry-run] [--skip-demo] [--tokens 8192]

1. `align doctor` on every tiny family and the toy model in bfloat16 on CUDA (the sampler invariants);
2. xformers against SDPA where xformers runs (max |image diff|), else the reason it does not;
3. cut-cross-entropy's token log-probs (`cce`) against naive and chunked at 8,192 tokens (SmolLM2's
   vocabulary and hidden size): parity of log-probs and gradients in float32 and bfloat16, the first
   call (its kernels' compile) on its own row, then warm forward + backward times and peak memory;
4. rollout ratios: our ODE rollout + decode and SDE rollout with log-probs + decode over a plain
   pipeline call, as benchmarks/rollout_vs_pipeline.py measures them, and the SDE rollout with the
   compiled fused step (sampling.step_kernel=compiled);
   host syncs: torch.cuda.set_sync_debug_mode("warn") around one SDE rollout of tiny:sd3 and one
   Flow-GRPO optimiser step, and the synchronizing calls it reports (goal: 0 in the rollout, at most
   2 in the step);
5. the toy demo's time (`align demo --grpo-only`) and its base -> aligned accuracy.
A check that fails prints its error in its row and the others still run; `--dry-run` prints the plan.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOCTOR_MODELS = [
    "tiny:sd15",
    "tiny:sd2",
    "tiny:sdxl",
    "tiny:sd3",
    "tiny:flux",
    "tiny:turbo",
    "tiny:sdxl-turbo",
    "toy",
]
XFORMERS_MODELS = ["tiny:sd15", "tiny:sd3", "toy"]  # per-module processors (UNet) and diffusers' dispatcher
ROLLOUT_MODELS = ["toy", "tiny:sd3", "tiny:sdxl"]
VOCAB, HIDDEN = 49152, 576  # SmolLM2-135M
ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda"


def plan(args) -> list[tuple[str, float]]:
    """(row, budgeted seconds) in the order they run."""
    rows = [(f"doctor {name} (cuda, bfloat16)", 6) for name in DOCTOR_MODELS]
    rows += [(f"xformers vs SDPA {name} (bfloat16)", 10) for name in XFORMERS_MODELS]
    rows += [
        (f"log-prob parity at {args.tokens} tokens, float32", 30),
        (f"log-prob parity at {args.tokens} tokens, bfloat16", 10),
        ("cce first call (compile), bfloat16", 30),
        *(
            (f"log-prob {b} warm fwd+bwd, {args.tokens} tokens, bfloat16", 5)
            for b in ("naive", "chunked", "cce")
        ),
    ]
    rows += [(f"rollout {name}: ODE / SDE+log-probs over pipeline", 20) for name in ROLLOUT_MODELS]
    rows += [("host syncs: one SDE rollout, tiny:sd3", 5), ("host syncs: one Flow-GRPO optimiser step", 10)]
    if not args.skip_demo:
        rows.append(("toy demo: align demo --grpo-only", 240))
    return rows


def synchronized(function):
    import torch

    def call():
        function()
        torch.cuda.synchronize()

    return call


def doctor(name: str) -> str:
    from align.doctor import run_checks
    from samplers.models import load_adapter

    checks = run_checks(load_adapter(name, device=DEVICE, dtype="bfloat16"))
    failed = [f"{c.name} {c.deviation:.2g} > {c.tolerance:.1g}" for c in checks if not c.passed]
    return f"FAIL: {'; '.join(failed)}" if failed else f"{len(checks)}/{len(checks)} checks pass"


def xformers_parity(name: str) -> str:
    import torch

    from samplers.attention import xformers_problem
    from samplers.models import load_adapter

    problem = xformers_problem(torch.device(DEVICE), torch.bfloat16)
    if problem is not None:
        return f"skipped: xformers cannot run here ({problem})"
    prompts, seeds = (
        ["a red circle", "two blue squares", "a green triangle", "three yellow squares"],
        [0, 1, 2, 3],
    )
    images = {}
    for backend in ("sdpa", "xformers"):
        adapter = load_adapter(name, device=DEVICE, dtype="bfloat16", attention=backend)
        if adapter.attention != backend:
            return f"FAIL: asked for {backend}, got {adapter.attention}"
        images[backend] = adapter.generate(prompts, seeds, num_steps=8)
    return f"max |image diff| {float((images['xformers'] - images['sdpa']).abs().max()):.4f}"


def log_prob_problem(tokens: int, dtype, seed: int = 0):
    import torch

    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = torch.randn(tokens, HIDDEN, generator=generator, device=DEVICE).to(dtype).requires_grad_()
    weight = (torch.randn(VOCAB, HIDDEN, generator=generator, device=DEVICE) / HIDDEN**0.5).to(dtype)
    targets = torch.randint(0, VOCAB, (tokens,), generator=generator, device=DEVICE)
    return hidden, weight.requires_grad_(), targets


def forward_backward(backend: str, hidden, weight, targets):
    """(log-probs [N] fp32, grad of hidden, grad of weight) for one backend on fresh gradients."""
    from align.text.logprob import token_log_probs

    hidden.grad = weight.grad = None
    log_probs = token_log_probs(hidden, weight, targets, backend=backend)
    log_probs.sum().backward()
    return log_probs.detach(), hidden.grad.float(), weight.grad.float()


def log_prob_parity(tokens: int, dtype_name: str) -> str:
    import torch

    dtype = getattr(torch, dtype_name)
    hidden, weight, targets = log_prob_problem(tokens, dtype)
    reference = forward_backward("naive", hidden, weight, targets)
    cells = []
    for backend in ("chunked", "cce"):
        result = forward_backward(backend, hidden, weight, targets)
        log_prob = float((result[0] - reference[0]).abs().max())
        grads = [float((r - g).abs().max() / g.abs().max()) for r, g in zip(result[1:], reference[1:])]
        cells.append(f"{backend} |d log-p| {log_prob:.1e}, rel |d grad| {max(grads):.1e}")
    return "; ".join(cells)


def cce_compile(tokens: int) -> str:
    import torch

    hidden, weight, targets = log_prob_problem(tokens, torch.bfloat16, seed=1)
    synchronized(lambda: forward_backward("cce", hidden, weight, targets))()
    return "first call, kernels compiled (cached afterwards)"


def log_prob_warm(tokens: int, backend: str) -> tuple[str, float]:
    import torch
    from rollout_vs_pipeline import timed

    hidden, weight, targets = log_prob_problem(tokens, torch.bfloat16, seed=2)
    call = synchronized(lambda: forward_backward(backend, hidden, weight, targets))
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    seconds = timed(call, repeats=10)
    return f"peak +{(torch.cuda.max_memory_allocated() - before) / 2**20:.0f} MB, median of 10", seconds


def rollout_ratios(name: str, steps: int = 10, batch: int = 8) -> str:
    import torch
    from rollout_vs_pipeline import timed

    from align.recipes import load_prompts
    from samplers.models import load_adapter
    from samplers.noise import generators_from_seeds

    adapter = load_adapter(name, device=DEVICE, dtype="bfloat16")
    prompts, seeds = (load_prompts("heldout") * 4)[:batch], list(range(batch))
    cond = adapter.encode(prompts)  # cached: the pipeline is handed them too (the fair base)

    def pipeline():
        adapter.pipeline_images(prompts, generators_from_seeds(seeds), steps, cond=cond)

    def rollout(noise_level: float):
        trajectory = adapter.sample(
            prompts, generators_from_seeds(seeds), num_steps=steps, noise_levels=noise_level
        )
        adapter.decode(trajectory.final)

    with torch.no_grad():
        base = timed(synchronized(pipeline), repeats=5)
        ode = timed(synchronized(lambda: rollout(0.0)), repeats=5)
        sde = timed(synchronized(lambda: rollout(0.7)), repeats=5)
        adapter.step_kernel = "compiled"
        compiled = timed(synchronized(lambda: rollout(0.7)), repeats=5)
    return (
        f"pipeline {base * 1e3:.1f} ms; ODE {ode / base:.2f}x, SDE+log-probs {sde / base:.2f}x, "
        f"compiled step {compiled / base:.2f}x (target <= 1.10x)"
    )


def host_syncs(function) -> str:
    """The synchronizing CUDA calls `function` makes, as torch's sync debug mode reports them."""
    import warnings

    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    return f"{len(found)} synchronizing call(s)" + (f"; first: {found[0][:80]}" if found else "")


def rollout_syncs() -> str:
    import torch

    from samplers.models import load_adapter
    from samplers.noise import generators_from_seeds

    adapter = load_adapter("tiny:sd3", device=DEVICE, dtype="bfloat16")
    prompts = ["a red circle"] * 8
    adapter.encode(prompts)
    with torch.no_grad():
        adapter.sample(prompts, generators_from_seeds(range(8)), num_steps=10, noise_levels=0.7)  # warm
        return host_syncs(
            lambda: adapter.sample(prompts, generators_from_seeds(range(8)), num_steps=10, noise_levels=0.7)
        )


@contextlib.contextmanager
def collected_epoch(device: str):
    """(run, batch, units): a tiny:sd3 Flow-GRPO run on `device` with its first epoch collected, and
    the micro-batch units of that epoch's one optimiser step (tests/test_host_syncs.py counts its
    reads on the CPU; step_syncs, its synchronizing calls on a GPU)."""
    import torch

    from align.config import config_from_data
    from align.loop import Run, plan_epoch

    data = {
        "model": {"name": "tiny:sd3"},
        "algorithm": {"name": "flow-grpo"},
        "rewards": {"terms": [{"name": "jpeg-compressibility"}]},
        "train": {"batch_size": 8, "group_size": 4, "micro_batch_size": 4},
        "logging": {"tensorboard": False, "progress": False},
    }
    with tempfile.TemporaryDirectory() as out:
        run = Run(config_from_data(data), out)
        plan = plan_epoch(run.prompts, run.config, 0, 0, 1)
        batch = run.algorithm.collect(0, plan.prompts, plan.group_ids.to(device), plan.seeds)
        yield run, batch, run.algorithm.micro_batches(batch, torch.Generator().manual_seed(0))


def step_syncs() -> str:
    with collected_epoch(DEVICE) as (run, batch, units):
        return host_syncs(lambda: run._optimiser_step(batch, units, {}, {}))


def demo() -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "demo"
        command = [sys.executable, "-m", "align.cli", "demo", "--grpo-only", "--out", str(out)]
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, timeout=420, cwd=ROOT)
        seconds = time.perf_counter() - start
        if finished.returncode != 0:
            return "FAIL: " + (finished.stderr.strip().splitlines() or ["no output"])[-1], seconds
        summary = json.loads((out / "summary.json").read_text())
    return f"accuracy {summary['base']['accuracy']:.3f} -> {summary['aligned']['accuracy']:.3f}", seconds


def checks(args) -> list:
    """(row, function returning its result or (result, seconds)) in the order of plan()."""
    functions = [lambda name=name: doctor(name) for name in DOCTOR_MODELS]
    functions += [lambda name=name: xformers_parity(name) for name in XFORMERS_MODELS]
    functions += [
        lambda: log_prob_parity(args.tokens, "float32"),
        lambda: log_prob_parity(args.tokens, "bfloat16"),
        lambda: cce_compile(args.tokens),
        *(lambda b=b: log_prob_warm(args.tokens, b) for b in ("naive", "chunked", "cce")),
    ]
    functions += [lambda name=name: rollout_ratios(name) for name in ROLLOUT_MODELS]
    functions += [rollout_syncs, step_syncs]
    if not args.skip_demo:
        functions.append(demo)
    return list(zip((row for row, _ in plan(args)), functions))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and budget; run nothing")
    parser.add_argument("--skip-demo", action="store_true", help="leave out the toy demo (about 4 minutes)")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens for the log-prob rows")
    args = parser.parse_args()
    width = max(len(row) for row, _ in plan(args)) + 2
    if args.dry_run:
        for row, budget in plan(args):
            print(f"{row:<{width}}{budget:>6.0f} s budget")
        print(
            f"{'total':<{width}}{sum(b for _, b in plan(args)):>6.0f} s budget (target: 8 minutes on one GPU)"
        )
        return 0
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU is visible here; `--dry-run` prints the plan", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"{'check':<{width}}{'seconds':>8}  result", flush=True)
    failures = 0
    for row, function in checks(args):
        start = time.perf_counter()
        try:
            result = function()
        except Exception as error:  # a check's failure is a row of the table, not the end of the run
            result = f"FAIL: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        result, seconds = result if isinstance(result, tuple) else (result, time.perf_counter() - start)
        failures += result.startswith("FAIL")
        print(f"{row:<{width}}{seconds:>8.2f}  {result}", flush=True)
    print(f"{failures} check(s) failed" if failures else "every check passed or was skipped with its reason")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
