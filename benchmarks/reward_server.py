"""The reward server's two claims, measured (run by hand, the machine otherwise idle; the defaults
reproduce docs/serving.md's tables):

1. Dynamic batching: two clients sending one image per request, for `--seconds` each, to a server that
   does not batch (`--max-batch 1`) and to ones that do (`--max-batch 64`, waiting 0 or 5 ms for
   company); images per second and the ratio, for the reward alone and with a fixed cost added to
   every batch (`--batch-delays`: what a model call costs regardless of its batch, as on a GPU).
2. Overlap: the demo's Flow-GRPO recipe (configs/toy/grpo-demo.yaml, `--epochs` epochs) scoring
   geneval-toy on a server that adds `--delay` seconds to every batch, synchronous against asynchronous
   scoring (both with sampling.chunks = `--chunks`); per epoch the sampling time, the scorer's time
   and what the batch waited for its scores (its collect time is sampling + waited), the collect
   time as a multiple of max(sampling, scoring), and whether each run's metrics.jsonl equals, field for
   field but the timings, the same recipe scoring geneval-toy locally and synchronously.

Usage:

    HF_HUB_OFFLINE=1 python benchmarks/reward_server.py [--reward clip-toy] [--seconds 10] [--delay 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server(*args: str):
    """`align serve-rewards ARGS` in a process of its own: its url."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "align.cli", "serve-rewards", "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.kill()
        process.wait()


def client_throughput(url: str, reward: str, seconds: float, clients: int = 2) -> float:
    """Images per second scored for `clients` threads sending one toy render per request."""
    from align.recipes import load_prompts
    from rewards.base import build_reward
    from rewards.toy_world import make_example

    prompts = load_prompts("heldout")
    renders = [
        torch.from_numpy(make_example(p, i)[0]).float().permute(2, 0, 1)[None] for i, p in enumerate(prompts)
    ]
    renders = [(image / 255 if image.max() > 1 else image).clamp(0, 1) for image in renders]
    done = [0] * clients

    def work(index: int):
        remote = build_reward(f"{reward}@{url}")
        stop = time.monotonic() + seconds
        i = index
        while time.monotonic() < stop:
            remote(renders[i % len(prompts)], [prompts[i % len(prompts)]])
            done[index] += 1
            i += clients

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def batching(reward: str, seconds: float, delays: list[float], waits: list[float]) -> list[tuple]:
    """(setting, images / s, ratio to the same delay without batching, mean images per batch) per setting."""
    import httpx

    rows = []
    for delay in delays:
        base = None
        settings = [("no batching", ["--max-batch", "1"])] + [
            (f"batching, --wait-ms {wait:g}", ["--max-batch", "64", "--wait-ms", str(wait)]) for wait in waits
        ]
        for label, options in settings:
            with server("--reward", reward, "--delay", str(delay), *options) as url:
                client_throughput(url, reward, 1.0)  # warm-up
                before = httpx.get(url + "/health").json()
                rate = client_throughput(url, reward, seconds)
                after = httpx.get(url + "/health").json()
            base = base or rate
            size = (after["images"] - before["images"]) / max(after["batches"] - before["batches"], 1)
            rows.append((f"{label}, {delay * 1000:.0f} ms added per batch", rate, rate / base, size))
    return rows


def overlap(epochs: int, delay: float, chunks: int) -> dict:
    from align.config import load_config
    from align.loop import train

    rows, stable = {}, {}
    with server("--reward", "geneval-toy", "--delay", str(delay)) as url, tempfile.TemporaryDirectory() as tmp:
        for mode in ("local", "synchronous", "asynchronous"):
            term = "{name: geneval-toy}" if mode == "local" else f"{{name: geneval-toy, args: {{remote: '{url}'}}}}"
            overrides = [
                f"train.num_epochs={epochs}",
                f"sampling.chunks={chunks}",
                f"rewards.asynchronous={str(mode == 'asynchronous').lower()}",
                f"rewards.terms=[{term}]",
                "eval.max_prompts=1",
                "eval.seeds=1",
                "eval.rewards=[]",
                "logging.progress=false",
                "logging.image_every=0",
            ]
            config = load_config(ROOT / "configs/toy/grpo-demo.yaml", overrides)
            train(config, Path(tmp) / mode)
            records = [
                json.loads(line) for line in (Path(tmp) / mode / "metrics.jsonl").read_text().splitlines()
            ]
            stable[mode] = [
                {k: v for k, v in r.items() if not k.startswith("time") and k != "samples_per_second"}
                for r in records
            ]
            if mode != "local":
                rows[mode] = {
                    key: statistics.median(r[f"time/{key}"] for r in records[1:] or records)
                    for key in ("sampling", "scoring", "reward")
                }
                rows[mode]["equal"] = stable[mode] == stable["local"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reward", default="clip-toy", help="the reward served in the batching test")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--batch-delays",
        type=float,
        nargs="*",
        default=[0.0, 0.02, 0.1],
        help="seconds added to every batch in the batching test: 0 (the reward alone) and a fixed cost "
        "per call, such as a GPU model's launch and transfer latency",
    )
    parser.add_argument("--waits", type=float, nargs="+", default=[0.0, 5.0, 10.0], help="--wait-ms values to try")
    parser.add_argument("--epochs", type=int, default=3, help="0: skip the overlap test")
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--chunks", type=int, default=4)
    args = parser.parse_args()

    if args.batch_delays:
        rows = batching(args.reward, args.seconds, args.batch_delays, args.waits)
        print(
            f"| {args.reward}, 2 clients, 1 image per request | images / s | vs no batching | images per batch |"
        )
        print("| --- | --- | --- | --- |")
        for label, rate, ratio, size in rows:
            print(f"| {label} | {rate:.1f} | {ratio:.2f}x | {size:.2f} |")
    if args.epochs == 0:
        return
    times = overlap(args.epochs, args.delay, args.chunks)
    print(
        f"\n| grpo-demo, geneval-toy served with {args.delay} s per batch, {args.chunks} parts | sampling s "
        "| scoring s | waited s | collect s | collect / max(sampling, scoring) | metrics = local run's |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode, t in times.items():
        collect = t["sampling"] + t["reward"]
        print(
            f"| {mode} | {t['sampling']:.2f} | {t['scoring']:.2f} | {t['reward']:.2f} | {collect:.2f} "
            f"| {collect / max(t['sampling'], t['scoring']):.2f}x | {'yes' if t['equal'] else 'NO'} |"
        )


if __name__ == "__main__":
    main()
