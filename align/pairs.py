"""Preference pairs: JSONL files (ours and the gallery's labelling export), Pick-a-Pic datasets,
and pairs generated and labelled by a reward. Every image is checked before anything trains.

JSONL, one pair per line: {"prompt": str, "chosen": path, "rejected": path, "source": optional}
Image paths are absolute or relative to the file's folder (or to `image_root`); the gallery's
labelling export adds absolute `chosen_path` / `rejected_path`, used when the relative ones miss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Pair:
    prompt: str
    chosen: Path | object  # a path, or a PIL image for dataset rows
    rejected: Path | object
    source: str = "file"


def read_pairs_file(path: str | Path, image_root: str | Path | None = None) -> list[Pair]:
    """Parse and check every line; the first problem raises one ValueError naming its line."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pairs file {path} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with prompt, chosen and rejected")
        missing = [key for key in ("prompt", "chosen", "rejected") if not row.get(key)]
        if missing:
            raise ValueError(f"{where}: missing field {', '.join(missing)}")
        files = []
        for key in ("chosen", "rejected"):
            file = Path(row[key]) if Path(row[key]).is_absolute() else root / row[key]
            if not file.is_file() and row.get(f"{key}_path"):  # the gallery export also carries absolute paths
                file = Path(row[f"{key}_path"])
            if not file.is_file():
                raise ValueError(f"{where}: {key} image {file} does not exist")
            try:
                with Image.open(file) as image:
                    image.verify()
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"{where}: {key} image {file} is not a readable image ({error})") from error
            files.append(file)
        pairs.append(Pair(str(row["prompt"]), files[0], files[1], str(row.get("source", "file"))))
    if not pairs:
        raise ValueError(f"pairs file {path} holds no pair")
    return pairs


def read_pickapic(name: str, split: str = "train", limit: int | None = None) -> list[Pair]:
    """Pick-a-Pic layout (caption, jpg_0, jpg_1, label_0): a hub name or a `save_to_disk` folder.

    Ties (label_0 = 0.5) are dropped, as Diffusion-DPO does.
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "the datasets library is not installed; pip install 'diffusion-align[dpo]'"
        ) from error
    import io

    from PIL import Image

    if Path(name).is_dir():
        dataset = datasets.load_from_disk(name)
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    else:
        dataset = datasets.load_dataset(name, split=split)
    pairs = []
    for row in dataset:
        if row["label_0"] == 0.5:
            continue
        first, second = (
            Image.open(io.BytesIO(row[k])) if isinstance(row[k], bytes) else row[k]
            for k in ("jpg_0", "jpg_1")
        )
        chosen, rejected = (first, second) if row["label_0"] == 1 else (second, first)
        pairs.append(Pair(row["caption"], chosen, rejected, "pickapic"))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def load_image(item, resolution: int) -> torch.Tensor:
    """[3, R, R] in [0, 1] from a path or a PIL image (resized to the model's resolution)."""
    from PIL import Image

    image = Image.open(item) if isinstance(item, (str, Path)) else item
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_pairs(adapter, pairs: list[Pair], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Latents of every chosen and rejected image, encoded once ([N, ...] each)."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        for key, store in (("chosen", chosen), ("rejected", rejected)):
            images = torch.stack([load_image(getattr(p, key), adapter.resolution) for p in chunk])
            store.append(adapter.encode_images(images.to(adapter.device)).cpu())
    return {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}


def write_pairs(
    directory: Path, prompts: list[str], chosen: torch.Tensor, rejected: torch.Tensor, source: str
) -> Path:
    """Save images and a pairs.jsonl (paths relative to `directory`)."""
    from rewards.base import to_pil

    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (prompt, win, lose) in enumerate(zip(prompts, to_pil(chosen), to_pil(rejected))):
        win.save(directory / "images" / f"{i:05d}_chosen.png")
        lose.save(directory / "images" / f"{i:05d}_rejected.png")
        lines.append(
            json.dumps(
                {
                    "prompt": prompt,
                    "chosen": f"images/{i:05d}_chosen.png",
                    "rejected": f"images/{i:05d}_rejected.png",
                    "source": source,
                }
            )
        )
    path = directory / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
