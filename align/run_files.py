"""The files of a run directory besides its checkpoints: config.yaml, metrics.jsonl (one line per
epoch, on the disk before the checkpoint that covers it), summary.json, and the trackers (TensorBoard,
wandb); and which checkpoint a `--resume` continues from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml

from align.checkpoint import atomic_write_text, remove_staging, verify_checkpoint
from align.config import config_to_data
from align.runs import checkpoints, is_run
from align.sharding import whole


def read_statistics(stats: dict[str, list], optional=("grad_agreement",)) -> dict[str, list[float]]:
    """An epoch's per-step statistics as Python floats: the 0-d tensors the steps left on their
    device read in one transfer per device (one host sync an epoch, not one a statistic a step). An
    `optional` statistic is NaN where a step could not measure it: those steps are left out (and the
    statistic, if none measured it)."""
    tensors = [v for values in stats.values() for v in values if isinstance(v, torch.Tensor)]
    # a statistic of sharded tensors (FSDP2's gradient norm) is a DTensor: its value is the whole one,
    # gathered on every process alike (each runs this with the same statistics, in the same order)
    full = {id(t): whole(t) for t in tensors}
    read: dict[int, float] = {}
    for device in dict.fromkeys(t.device for t in full.values()):
        mine = [key for key, t in full.items() if t.device == device]
        values = torch.stack([full[key].detach().double().reshape(()) for key in mine]).tolist()
        read.update(zip(mine, values))
    out = {k: [read[id(v)] if isinstance(v, torch.Tensor) else float(v) for v in values] for k, values in stats.items()}
    for key in optional:
        measured = [v for v in out.pop(key, []) if v == v]
        if measured:
            out[key] = measured
    return out


def resolve_resume(path: Path, out: Path) -> Path | None:
    """The checkpoint to continue from, checked against its manifest: `path` itself, or a run
    directory's latest. None when `path` is `out` and that run stopped before its first checkpoint:
    it starts over. Anything else is an error."""
    path = Path(path)
    started = (path / "config.yaml").is_file()
    if started and not checkpoints(path) and path.resolve() == Path(out).resolve():
        return None
    if is_run(path):
        found = checkpoints(path)
        if not found:
            raise ValueError(f"--resume {path}: the run has no complete checkpoint to resume from")
        return verify_checkpoint(found[-1])
    if (path / "checkpoint.json").is_file():
        return verify_checkpoint(path)
    raise ValueError(f"--resume {path}: neither a run directory with checkpoints nor a checkpoint")


def prepare_directory(run, fresh: bool) -> None:
    """Make the run directory agree with the state the run starts from. A fresh run (or one killed
    before its first checkpoint) writes its config; a resumed one drops the metrics and evaluations
    written after its checkpoint, which it will redo. Either removes a killed checkpoint write."""
    out = run.out
    if fresh:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_data(run.config), sort_keys=False))
        atomic_write_text(out / "metrics.jsonl", "")
        (out / "summary.json").unlink(missing_ok=True)
    remove_staging(out / "checkpoints")
    truncate_metrics(out / "metrics.jsonl", run.epoch)
    if run.summary:
        write_summary(out, run.summary)


def truncate_metrics(path: Path, epoch: int) -> None:
    """A resumed run rewrites the epochs after its checkpoint, so keep only the lines before (a line a
    kill cut short is after the checkpoint too: the line is written before the checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epoch:
                kept.append(line)
        except ValueError:
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # on the disk before the checkpoint that covers it


def write_summary(out: Path, summary: dict) -> None:
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))


def trackers(config, out: Path, main: bool, first_epoch: int) -> list:
    """accelerate's experiment trackers: TensorBoard events in OUT/tensorboard, those an earlier, killed
    process logged from `first_epoch` on hidden (purge_step), since this run logs those epochs again;
    wandb in OUT/wandb (WANDB_MODE=offline runs without an account; `wandb sync` uploads later)."""
    if not main:
        return []
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers = []
    if config.logging.tensorboard:
        trackers.append(TensorBoardTracker("", str(out / "tensorboard"), purge_step=first_epoch))
    if config.logging.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "logging.wandb needs wandb: pip install 'diffusion-align[wandb]' (or set logging.wandb: false)"
            ) from error
        trackers.append(
            WandBTracker("diffusion-align", name=out.name, dir=str(out), config=config_to_data(config))
        )
    for tracker in trackers:
        tracker.start()
    return trackers


def log_epoch(trackers: list, record: dict, images: torch.Tensor, prompts: list[str], config) -> None:
    """An epoch's numbers to every tracker, and every image_every epochs a grid of its first 16 samples
    (of a video model's, 8 film strips)."""
    epoch = record["epoch"]
    scalars = {
        key: value
        for key, value in flatten(record).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    every = config.logging.image_every
    show = images is not None and every and epoch % every == 0
    if show:
        from torchvision.utils import make_grid

        if images.ndim == 5:  # clips: the first 8 as film strips, a row of frames each
            grid = make_grid(images[:8].flatten(0, 1).cpu(), nrow=images.shape[1])
        else:
            grid = make_grid(images[:16].cpu(), nrow=4)
    for tracker in trackers:
        tracker.log(scalars, step=epoch)
        if show:
            tracker.log_images({"samples": grid[None]}, step=epoch)
            tracker.log({"samples/prompts": " | ".join(prompts[:16])}, step=epoch)


def flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
