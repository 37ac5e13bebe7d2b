"""Ours against the tools users would pick instead, on the same tiny models and settings, side by side.

    python benchmarks/vs_peers.py --work DIR [--repeats 3] [--cases ddpo alignprop-64 ...] \
        [--flow-grpo CHECKOUT] [--trl-python PY] [--trl-grpo-python PY]

The peer side is the project's own scripts in benchmarks/peers/ (trl_image.py: trl 0.23.1's
DDPOTrainer and AlignPropTrainer, the last trl release that ships them; trl_text.py: trl 1.16's
GRPOTrainer), each run by the python of its own virtualenv: made under WORK/venvs from
peers/trl-0.23.txt and peers/trl-1.16.txt on first use (a few minutes; PyPI only), unless --trl-python
/ --trl-grpo-python name one. They build their tiny random models under WORK on first use; ours
loads those very directories through its ordinary loaders (same weights, same seed), with the
settings the peer's CONFIG line prints. Every case runs ours, then the peer, then ours, ...
(--repeats times each) in fresh processes, with one torch thread each, and the table gives the
medians and ours / peer's.

Flow-GRPO has no trl peer: ours is split into sampling / reward / training on tiny:sd3, the rollout
with log-probs is set against a plain pipeline call, and, given --flow-grpo (a checkout of the
public flow_grpo repository), peers/flow_grpo_harness.py imports the reference's own SDE step and
sampling pipeline from it and times them on the same model, driven as its training script drives them.

Peak memory growth is the process's peak resident set during training less its peak before it
(ours: measured in the process before the first epoch; the peer: a process of the same venv that
only imports trl and loads the pipeline with its LoRA).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
PEERS = Path(__file__).resolve().parent / "peers"  # the peer-side scripts and their requirements
sys.path.insert(0, str(PEERS))
from trl_image import PROMPTS as IMAGE_PROMPTS  # noqa: E402  (the peers' prompts are ours too)
from trl_text import PROMPTS as TEXT_PROMPTS  # noqa: E402

TRL_CASES = ("ddpo", "alignprop-64", "alignprop-256")  # trl 0.23.1's virtualenv runs the peer side
TRL_GRPO_CASES = ("grpo-tiny", "grpo-smollm2")  # trl 1.16's
CASES = (*TRL_CASES, *TRL_GRPO_CASES, "flow-grpo")
VENVS = {"trl_python": ("trl-0.23", TRL_CASES), "trl_grpo_python": ("trl-1.16", TRL_GRPO_CASES)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- our side, one case per process -------------------------------------------------------------


def register_benchmark_rewards() -> None:
    """The peers' rewards under our reward protocol: mean brightness (differentiable) and the
    length/keyword text reward."""
    from rewards.base import Reward, register_reward
    from rewards.text.base import TextReward

    @register_reward("brightness", differentiable=True, weights="none", description="mean pixel value")
    class Brightness(Reward):
        differentiable = True

        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    @register_reward("length-keyword", differentiable=False, weights="none", description="trl_grpo's")
    class LengthKeyword(TextReward):
        def score(self, texts, prompts):
            return [-abs(len(t) - 40) / 40.0 + (1.0 if "cat" in t else 0.0) for t in texts]


def image_config(args, prompts_file: str) -> dict:
    """The peer's DDPO / AlignProp settings in our config."""
    alignprop = args.child.startswith("alignprop")
    return {
        "model": {
            "name": args.model_dir,
            "guidance_scale": 5.0,
            "resolution": args.resolution,
            "compile": args.compile,
        },
        "lora": {"rank": 4, "alpha": 4.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
        "sampling": {"num_steps": args.steps, "noise_level": 1.0},
        "rewards": {"terms": [{"name": "brightness"}], "normalise": "none"},
        "algorithm": (
            {
                "name": "alignprop",
                "truncation_min": args.steps,
                "checkpoint_blocks": args.checkpoint_blocks,
                "checkpoint_above_mb": args.checkpoint_above_mb,
            }  # every step with gradients, as the peer's K = 0
            if alignprop
            else {"name": "ddpo", "advantage": {"rule": "batch", "clip": 5.0}, "clip_range": 1e-4}
        ),
        "train": {
            "batch_size": 4,
            "group_size": 1,
            "micro_batch_size": 4,
            "lr": 1e-3 if alignprop else 3e-4,
            "weight_decay": 1e-4,
            "max_grad_norm": 1.0,
            "prompts": prompts_file,
        },
        "logging": {"tensorboard": False, "progress": False},
    }


def text_config(args, prompts_file: str) -> dict:
    """The peer's GRPO settings in our config (full fine-tuning, no KL, 2 prompts x 4 completions)."""
    return {
        "model": {"name": args.model_dir, "gradient_checkpointing": args.grad_ckpt},
        "rewards": {"terms": [{"name": "length-keyword"}], "normalise": "none"},
        "algorithm": {
            "name": "text-grpo",
            "max_new_tokens": 32,
            "temperature": 1.0,
            "kl_coef": 0.0,
            "clip_range": 0.2,
            "chat_template": False,
        },
        "train": {
            "trainable": "full",
            "batch_size": 8,
            "group_size": 4,
            "micro_batch_size": 8,
            "lr": 1e-5,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "prompts": prompts_file,
        },
        "eval": {"prompts": prompts_file},
        "logging": {"tensorboard": False, "progress": False},
    }


def run_ours(args) -> dict:
    import torch

    from align.config import config_from_data
    from align.loop import Run

    torch.set_num_threads(1)
    register_benchmark_rewards()
    with tempfile.TemporaryDirectory() as work:
        prompts = Path(work) / "prompts.txt"
        text = args.child.startswith("grpo")
        prompts.write_text("\n".join(TEXT_PROMPTS if text else IMAGE_PROMPTS) + "\n")
        data = text_config(args, str(prompts)) if text else image_config(args, str(prompts))
        config = config_from_data(data)
        run = Run(config, Path(work) / "run")
        before = {n: p.detach().clone() for n, p in run.policy.named_parameters().items()}
        rss_before = peak_rss_mib()
        times, records = [], []
        for _ in range(args.epochs):
            start = time.perf_counter()
            record = run.train_epoch()
            times.append(time.perf_counter() - start)
            records.append({k: v for k, v in record.items() if not k.startswith("_")})
        after = run.policy.named_parameters()
    steady = times[args.warmup :]
    return {
        "sec_per_step_median": statistics.median(steady),
        "sec_per_step_all": [round(t, 4) for t in times],
        "peak_rss_mib": peak_rss_mib(),
        "peak_growth_mib": peak_rss_mib() - rss_before,
        "trainable_params_changed": any(not torch.equal(before[n], after[n]) for n in before),
        "last_record": {k: v for k, v in records[-1].items() if isinstance(v, (int, float))},
    }


def run_ours_flow(args) -> dict:
    """Flow-GRPO on tiny:sd3: the epoch split per sample, and rollout with log-probs vs the pipeline."""
    import torch

    from align.config import config_from_data
    from align.loop import Run
    from samplers.noise import generators_from_seeds

    torch.set_num_threads(1)
    config = config_from_data(
        {
            "model": {"name": "tiny:sd3", "guidance_scale": 4.5},
            "algorithm": {"name": "flow-grpo", "beta": args.beta},
            "rewards": {"terms": [{"name": "jpeg-compressibility"}]},
            "sampling": {"num_steps": 10, "noise_level": 0.7},
            "train": {"batch_size": 8, "group_size": 4, "micro_batch_size": 8},
            "logging": {"tensorboard": False, "progress": False},
        }
    )
    with tempfile.TemporaryDirectory() as out:
        run = Run(config, out)
        records = []
        for _ in range(args.epochs):
            records.append(run.train_epoch())
        adapter = run.adapter
        prompts, seeds = run.prompts[:8], list(range(8))

        @torch.no_grad()
        def pipeline():
            adapter.pipeline_images(prompts, generators_from_seeds(seeds), 10)

        @torch.no_grad()
        def sde():
            trajectory = adapter.sample(prompts, generators_from_seeds(seeds), num_steps=10, noise_levels=0.7)
            adapter.decode(trajectory.final)

        adapter.encode(prompts)
        pipeline_times, sde_times = [], []
        for _ in range(args.epochs):  # interleaved, so that load on the machine hits both alike
            for function, times in ((pipeline, pipeline_times), (sde, sde_times)):
                start = time.perf_counter()
                function()
                times.append(time.perf_counter() - start)
    steady = records[args.warmup :]
    per_sample = {
        part: statistics.median(r[f"time/{part}"] for r in steady) / 8
        for part in ("sampling", "reward", "training", "epoch")
    }
    return {
        "per_sample": per_sample,
        "pipeline_s": statistics.median(pipeline_times[1:]),
        "sde_rollout_s": statistics.median(sde_times[1:]),
        "last_record": {k: v for k, v in records[-1].items() if isinstance(v, (int, float))},
    }


# --- the peer side --------------------------------------------------------------------------------


def result_line(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"no RESULT line in:\n{output[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def config_line(output: str) -> dict | None:
    lines = [line for line in output.splitlines() if line.startswith("CONFIG ")]
    return json.loads(lines[-1][len("CONFIG ") :]) if lines else None


def run_process(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


PEER_BASELINE = r"""
import resource, sys, torch
torch.set_num_threads(1)
from accelerate import PartialState
from trl import DefaultDDPOStableDiffusionPipeline
PartialState()
DefaultDDPOStableDiffusionPipeline(sys.argv[1], use_lora=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def model_at(work: Path, name: str, resolution: int) -> Path:
    """The peer's tiny SD-1.5 directory, or a copy whose UNet sample_size gives `resolution` pixels
    (same weights: sample_size only sets the default image size)."""
    base = work / name
    if resolution == 64:
        return base
    copy = work / f"{name}-{resolution}px"
    if not copy.exists():
        shutil.copytree(base, copy)
        config_path = copy / "unet" / "config.json"
        config = json.loads(config_path.read_text())
        config["sample_size"] = resolution // 2
        config_path.write_text(json.dumps(config, indent=2))
    return copy


def smollm2_dir() -> str:
    from align.text.models import smollm2_directory

    return str(smollm2_directory())


# --- driver ---------------------------------------------------------------------------------------


def case_commands(case: str, args) -> tuple[list[str], list[str] | None, dict]:
    """(our command, the peer's command or None, settings) of a case."""
    work = Path(args.work)
    me = [sys.executable, os.path.abspath(__file__)]
    if case == "ddpo" or case.startswith("alignprop"):
        resolution = 64 if case == "ddpo" else int(case.split("-")[1])
        model = model_at(work, "tiny-sd15", resolution)
        # at 256 px a step of either side takes minutes: 2 denoising steps, one timed step after one
        steps, epochs = (10, args.image_epochs) if resolution == 64 else (2, 2)
        epochs = ["--epochs", str(epochs), "--warmup", "1", "--steps", str(steps)]
        ours = me + ["--child", case, "--model-dir", str(model), "--resolution", str(resolution)] + epochs
        ours += ["--checkpoint-blocks"] if args.checkpoint_blocks else []
        ours += ["--checkpoint-above-mb", str(args.checkpoint_above_mb)]
        ours += ["--compile"] if args.compile else []
        which = "ddpo" if case == "ddpo" else "alignprop"
        peer = [args.trl_python, str(PEERS / "trl_image.py"), "--which", which]
        peer += ["--model-dir", str(model)] + epochs
        settings = {"resolution": resolution, "batch": 4, "steps": steps, "eta": 1.0, "guidance": 5.0}
        if case.startswith("alignprop"):
            settings["ours: checkpoint_blocks"] = args.checkpoint_blocks
            settings["ours: checkpoint_above_mb"] = args.checkpoint_above_mb
        settings["ours: model.compile"] = args.compile
        settings |= {"lora": "r4 alpha 4 on to_q/k/v/out.0", "reward": "brightness"}
        return ours, peer, settings
    if case.startswith("grpo"):
        model = work / "tiny-llama" if case == "grpo-tiny" else Path(smollm2_dir())
        steps, warmup = (30, 5) if case == "grpo-tiny" else (8, 2)
        ckpt = [] if args.grad_ckpt else ["--no-grad-ckpt"]
        ours = me + [
            "--child",
            case,
            "--model-dir",
            str(model),
            "--epochs",
            str(steps),
            "--warmup",
            str(warmup),
        ]
        peer = [args.trl_grpo_python, str(PEERS / "trl_text.py"), "--model-dir", str(model)]
        peer += ["--steps", str(steps), "--warmup", str(warmup)] + ckpt
        settings = {"batch": "2 prompts x 4", "max_new_tokens": 32, "temperature": 1.0, "beta": 0.0}
        settings |= {"trainable": "full", "gradient_checkpointing": args.grad_ckpt}
        return ours + ckpt, peer, settings
    ours = me + ["--child", case, "--epochs", "4", "--warmup", "1", "--beta", str(args.beta)]
    peer = None
    if args.flow_grpo:
        peer = [sys.executable, str(PEERS / "flow_grpo_harness.py"), "--flow-grpo", args.flow_grpo]
        peer += ["--epochs", "4", "--warmup", "1", "--beta", str(args.beta)]
    settings = {"model": "tiny:sd3", "batch": "2 prompts x 4", "steps": 10, "guidance": 4.5}
    settings |= {"noise_level": 0.7, "beta": args.beta, "lora": "r8 on attention projections"}
    return ours, peer, settings


def build_peer_models(args) -> None:
    work = Path(args.work)
    cases = set(args.cases)
    if cases & set(TRL_CASES) and not (work / "tiny-sd15").exists():
        run_process(
            [
                args.trl_python,
                str(PEERS / "trl_image.py"),
                "--build-only",
                "--model-dir",
                str(work / "tiny-sd15"),
            ]
        )
    if "grpo-tiny" in cases and not (work / "tiny-llama").exists():
        run_process(
            [
                args.trl_grpo_python,
                str(PEERS / "trl_text.py"),
                "--build-only",
                "--model-dir",
                str(work / "tiny-llama"),
            ]
        )


def peer_growth(args, model: str) -> float:
    return float(run_process([args.trl_python, "-c", PEER_BASELINE, model]).strip().splitlines()[-1])


def peer_python(work: Path, name: str) -> str:
    """The python of the peer virtualenv `name` under WORK/venvs, made from peers/NAME.txt on first
    use, and made again when those requirements change."""
    requirements = PEERS / f"{name}.txt"
    venv = work / "venvs" / name
    stamp, python = venv / "requirements.txt", venv / "bin" / "python"
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        return str(python)
    print(f"# making the {name} virtualenv at {venv} from {requirements.name} ...", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    shutil.copyfile(requirements, stamp)
    return str(python)


def drive(args) -> None:
    build_peer_models(args)
    rows, configs = [], {}
    for case in args.cases:
        ours_command, peer_command, settings = case_commands(case, args)
        ours_runs, peer_runs = [], []
        try:
            for _ in range(args.repeats):
                ours_runs.append(result_line(run_process(ours_command)))
                if peer_command is not None:
                    output = run_process(peer_command)
                    peer_runs.append(result_line(output))
                    configs[case] = config_line(output)
                print(f"# {case}: run {len(ours_runs)} of {args.repeats} done", file=sys.stderr, flush=True)
        except RuntimeError as error:  # one case failing leaves the others' rows
            print(f"# {case} failed: {error}", file=sys.stderr, flush=True)
            continue
        rows += summarise(case, ours_runs, peer_runs, settings, args, peer_command)
    print_table(rows, configs, args)


def median(values):
    return statistics.median(values) if values else None


def summarise(case, ours, peer, settings, args, peer_command) -> list[dict]:
    if case == "flow-grpo":
        rows = []
        for part in ("sampling", "reward", "training", "epoch"):
            mine = median([r["per_sample"][part] for r in ours])
            theirs = median([r["per_sample"][part] for r in peer]) if peer else None
            rows.append(
                {
                    "case": f"flow-grpo {part} / sample",
                    "unit": "s",
                    "ours": mine,
                    "peer": theirs,
                    "peer_name": "flow_grpo reference" if peer else "flow_grpo reference: not run",
                    "settings": settings,
                }
            )
        rows.append(
            {
                "case": "flow-grpo SDE rollout + log-probs vs pipeline",
                "unit": "s",
                "ours": median([r["sde_rollout_s"] for r in ours]),
                "peer": median([r["pipeline_s"] for r in ours]),
                "peer_name": "diffusers pipeline call",
                "settings": settings,
            }
        )
        return rows
    name = "trl 0.23.1 DDPOTrainer" if case == "ddpo" else "trl 0.23.1 AlignPropTrainer"
    if case.startswith("grpo"):
        name = "trl 1.16 GRPOTrainer"
    peer_key = "sec_per_epoch_median" if not case.startswith("grpo") else "sec_per_step_median"
    rows = [
        {
            "case": f"{case} step",
            "unit": "s",
            "ours": median([r["sec_per_step_median"] for r in ours]),
            "peer": median([r[peer_key] for r in peer]),
            "peer_name": name,
            "settings": settings,
        }
    ]
    if case.startswith("alignprop"):
        model = peer_command[peer_command.index("--model-dir") + 1]
        baseline = peer_growth(args, model)
        rows.append(
            {
                "case": f"{case} peak memory growth",
                "unit": "MiB",
                "ours": median([r["peak_growth_mib"] for r in ours]),
                "peer": median([r["peak_rss_mib"] - baseline for r in peer]),
                "peer_name": name,
                "settings": settings,
            }
        )
    return rows


def print_table(rows, configs, args) -> None:
    print(
        f"ours / peer's, medians of {args.repeats} interleaved runs each (ours, peer, ours, peer, ...), "
        "1 torch thread per process"
    )
    print(f"{'case':<46}{'unit':>5}{'ours':>10}{'peer':>10}{'ratio':>8}  peer")
    for row in rows:
        peer = row["peer"]
        ratio = f"{row['ours'] / peer:>8.2f}" if peer else f"{'-':>8}"
        peer_text = f"{peer:>10.3f}" if peer is not None else f"{'-':>10}"
        print(f"{row['case']:<46}{row['unit']:>5}{row['ours']:>10.3f}{peer_text}{ratio}  {row['peer_name']}")
    print("\nsettings (both sides):")
    seen = set()
    for row in rows:
        key = json.dumps(row["settings"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            print(f"  {row['case'].split()[0]}: {key}")
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    print(
        f"  allocator (both sides): MALLOC_MMAP_THRESHOLD_={threshold or 'unset (glibc dynamic threshold)'}"
    )
    for case, config in configs.items():
        if config:
            print(f"  peer CONFIG {case}: {json.dumps(config)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint-blocks",
        action="store_true",
        help="ours: AlignProp also checkpoints inside each denoiser and decoder call (less memory, more time)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="ours (DDPO, AlignProp): model.compile, torch.compile on the denoiser (compiled in the warm-up epoch)",
    )
    parser.add_argument(
        "--checkpoint-above-mb",
        type=float,
        default=512.0,
        help="ours: AlignProp's algorithm.checkpoint_above_mb (replay fewer rows at a time, then checkpoint)",
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        help="glibc MALLOC_MMAP_THRESHOLD_ for both sides (e.g. 131072): large tensors are mapped and "
        "returned on free, so peak RSS tracks live memory rather than the heap glibc keeps",
    )
    parser.add_argument(
        "--trl-python", default=os.environ.get("PEER_TRL_PYTHON"), help="python of a trl 0.23.1 virtualenv (default: made under WORK/venvs)"
    )
    parser.add_argument(
        "--trl-grpo-python",
        default=os.environ.get("PEER_TRL_GRPO_PYTHON"),
        help="python of a trl 1.16 virtualenv (default: made under WORK/venvs)",
    )
    parser.add_argument("--work", default=os.environ.get("PEERS"), help="where the peers' virtualenvs and tiny models are made")
    parser.add_argument("--flow-grpo", default=os.environ.get("FLOW_GRPO"), help="flow_grpo checkout")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-epochs", type=int, default=3, help="DDPO/AlignProp steps per run")
    parser.add_argument(
        "--no-grad-ckpt",
        dest="grad_ckpt",
        action="store_false",
        help="text GRPO without activation checkpointing (on by default, as trl 1.x)",
    )
    parser.add_argument("--beta", type=float, default=0.04, help="Flow-GRPO KL weight")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "flow-grpo":
            result = run_ours_flow(args)
        else:
            result = run_ours(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if not args.work:
        parser.error("give --work DIR (or PEERS): the peers' virtualenvs and tiny models are made there")
    for option, (name, cases) in VENVS.items():  # each peer's python is needed only by its cases
        if set(args.cases) & set(cases) and not getattr(args, option):
            setattr(args, option, peer_python(Path(args.work), name))
    if args.mmap_threshold is not None:  # read by glibc at each child's start: both sides alike
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    drive(args)


if __name__ == "__main__":
    main()
