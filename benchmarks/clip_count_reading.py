"""Does the toy CLIP read count? On clean renders, and on the images of an `align optimize` run.

    python benchmarks/clip_count_reading.py [RUN_DIR ...]

First the clean held-out renders: of each single-object prompt's three count captions ("a red circle",
"two red circles", "three red circles"), how often the toy CLIP prefers the right one (chance 1/3).
Then, per method of each run directory (`align optimize ... --out RUN_DIR`: base, best_of_n,
optimized), the single-object images split by the exact verifier's count verdict, and how often the CLIP
prefers the prompt's own count caption in each part. Where the count is wrong, that is how often the CLIP
is fooled: a reward that reads count on clean renders can still misread it on a model's samples.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from align.toy.reward_models import clip_count_top1, count_variants, prefers_own_caption
from rewards.clip_score import _toy_clip_dir
from rewards.geneval import evaluate_images
from rewards.open_clip_models import image_embeddings, load_open_clip


def read_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


@torch.no_grad()
def count_preferences(clip, tokenizer, normalisation, images, prompts) -> dict[str, list[int]]:
    """{"count right" | "count wrong": [1 where the CLIP prefers the prompt's own count caption]}."""
    verdicts = evaluate_images(images, prompts)
    features = image_embeddings(clip, images, normalisation)
    rows: dict[str, list[int]] = {"count right": [], "count wrong": []}
    for feature, prompt, verdict in zip(features, prompts, verdicts):
        rivals = count_variants(prompt)
        if rivals:
            verdict_key = "count right" if verdict["constraints"]["count"] else "count wrong"
            rows[verdict_key].append(prefers_own_caption(clip, tokenizer, feature, prompt, rivals))
    return rows


def main(run_dirs: list[str]) -> None:
    model = _toy_clip_dir()
    print(f"clean held-out renders, 4 seeds: right count caption preferred {clip_count_top1(model):.3f}")
    clip, tokenizer, normalisation = load_open_clip(model, None, "cpu")
    print("| run | method | accuracy | count right: n, CLIP prefers own count | count wrong: n, CLIP fooled |")
    print("| --- | --- | --- | --- | --- |")
    for run in map(Path, run_dirs):
        prompts = json.loads((run / "curves.json").read_text())["prompts"]
        for method in sorted(p.name for p in (run / "images").iterdir()):
            images = torch.stack([read_png(f) for f in sorted((run / "images" / method).glob("*.png"))])
            accuracy = np.mean([r["all"] for r in evaluate_images(images, prompts)])
            rows = count_preferences(clip, tokenizer, normalisation, images, prompts)
            cells = [f"{len(v)}, {np.mean(v):.3f}" if v else "0" for v in rows.values()]
            print(f"| {run.name} | {method} | {accuracy:.3f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main(sys.argv[1:])
