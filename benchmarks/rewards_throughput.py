"""Images per second of each reward on CPU at batch sizes 1, 8 and 32.

Model-based rewards run tiny random models of their real architectures (rewards/tiny.py), so the
numbers measure the reward code and preprocessing, not the published networks; the OCR rewards run
the real engines with their shipped models on rendered text. Usage:

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/rewards_throughput.py [--size 128] [--rewards ocr jpeg-compressibility]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def sign_images(count: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Black words on white (what the OCR rewards read), with their prompts."""
    from PIL import Image, ImageDraw, ImageFont

    from rewards.base import from_pil

    words = ["OPEN", "SALE", "Coffee 24", "HELLO", "EXIT 3"]
    font = ImageFont.load_default(size=size // 6)
    pictures, prompts = [], []
    for i in range(count):
        word = words[i % len(words)]
        picture = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(picture)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        draw.text(((size - right - left) / 2, (size - bottom - top) / 2), word, fill="black", font=font)
        pictures.append(picture)
        prompts.append(f'a sign that says "{word}"')
    return from_pil(pictures), prompts


def build_rewards(names: list[str] | None, directory: str) -> dict:
    from rewards.base import build_reward
    from rewards.tiny import tiny_dino, tiny_hps, tiny_pickscore

    references = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    factories = {
        "jpeg-compressibility": lambda: build_reward("jpeg-compressibility"),
        "jpeg-incompressibility": lambda: build_reward("jpeg-incompressibility"),
        "clip": lambda: build_reward("clip", model=tiny_hps(f"{directory}/clip")[0], pretrained=None),
        "pickscore": lambda: build_reward(
            "pickscore", model=tiny_pickscore(f"{directory}/p"), processor=f"{directory}/p"
        ),
        "hps": lambda: build_reward("hps", **dict(zip(("model", "checkpoint"), tiny_hps(f"{directory}/h")))),
        "dino": lambda: build_reward("dino", model=tiny_dino(f"{directory}/d"), references=references),
        "dino-distribution": lambda: build_reward(
            "dino-distribution", model=tiny_dino(f"{directory}/d"), references=references
        ),
        "discriminator": lambda: build_reward("discriminator", model=tiny_dino(f"{directory}/d")),
        "ocr": lambda: build_reward("ocr"),
        "ocr-ctc": lambda: build_reward("ocr-ctc"),
    }
    unknown = sorted(set(names or []) - set(factories))
    if unknown:
        raise SystemExit(f"error: no benchmark for {unknown}; choose from {', '.join(factories)}")
    return {name: factories[name]() for name in names or factories}


def images_per_second(reward, images, prompts, min_time: float) -> float:
    with torch.no_grad():
        reward(images, prompts)  # warm-up (lazy initialisation, caches)
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < min_time:
            reward(images, prompts)
            runs += 1
    return runs * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", nargs="*", default=None, help="a subset (default: all)")
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 8, 32])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds to time each cell at least")
    args = parser.parse_args()
    images, prompts = sign_images(max(args.batch_sizes), args.size)
    with tempfile.TemporaryDirectory() as directory:
        rewards = build_rewards(args.rewards, directory)
        print(f"images/s on CPU ({torch.get_num_threads()} threads), {args.size}x{args.size} images")
        print(f"{'reward':<24}" + "".join(f"{f'batch {b}':>12}" for b in args.batch_sizes))
        for name, reward in rewards.items():
            cells = []
            for batch in args.batch_sizes:
                if name == "dino-distribution" and batch < 2:
                    cells.append("n/a")  # scores an image against the rest of its batch
                    continue
                rate = images_per_second(reward, images[:batch], prompts[:batch], args.min_time)
                cells.append(f"{rate:.1f}")
            print(f"{name:<24}" + "".join(f"{cell:>12}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
