"""Run directories and checkpoints, and loading them back as models.

RUN_DIR/
  .lock                  pid and host of the run writing here (align.faults.run_lock)
  config.yaml            the resolved experiment config
  metrics.jsonl          one JSON object per epoch
  summary.json           {"base": evaluation, "aligned": evaluation}
  tensorboard/           events with scalars and image grids
  checkpoints/epoch-NNNNNN/
      checkpoint.json    base model, family, epoch, what the weights are
      lora/              pytorch_lora_weights.safetensors (pipeline.load_lora_weights reads it)
      model/             full fine-tuning: the denoiser's save_pretrained
      state.*            optimiser, EMA, RNG, reward and algorithm state (no pickle)
      manifest.json      size and SHA-256 of every file above, written last
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CHECKPOINT_PREFIX = "epoch-"
DEVICE_DEFAULTS = {"family": "auto", "dtype": "auto", "device": "cpu"}  # samplers.models.load_adapter's


def checkpoint_name(epoch: int) -> str:
    return f"{CHECKPOINT_PREFIX}{epoch:06d}"


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (staging directories are hidden and skipped)."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.name.startswith(CHECKPOINT_PREFIX) and (p / "checkpoint.json").is_file()
    ]
    return sorted(found)


def run_record(run_dir: Path) -> dict:
    """A training run as a gallery is handed it: its directory and its latest complete checkpoint."""
    found = checkpoints(run_dir)
    return {"path": Path(run_dir), "checkpoint": found[-1].name if found else None}


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def resolve_checkpoint(spec: str) -> tuple[str, Path, dict] | None:
    """(base model, checkpoint dir, adapter settings) for a run directory or a checkpoint; else None."""
    path = Path(spec)
    if not path.is_dir():
        return None
    if is_run(path):
        found = checkpoints(path)
        if not found:
            raise ValueError(f"run {path} has no complete checkpoint yet")
        path = found[-1]
    if not (path / "checkpoint.json").is_file():
        return None
    info = json.loads((path / "checkpoint.json").read_text())
    return info["base_model"], path, info.get("adapter", {})


def verify_if_manifested(checkpoint: Path) -> None:
    """Check a checkpoint against its manifest, where it has one (hand-made checkpoints, such as
    tests' and exports, have none)."""
    from align.checkpoint import MANIFEST, verify_checkpoint

    if (checkpoint / MANIFEST).is_file():
        verify_checkpoint(checkpoint)


def apply_checkpoint(adapter, checkpoint: Path) -> None:
    """Load a checkpoint's weights into an adapter built on its base model."""
    verify_if_manifested(checkpoint)
    if (checkpoint / "lora").is_dir():
        adapter.pipeline.load_lora_weights(str(checkpoint / "lora"))
    elif (checkpoint / "model").is_dir():
        from safetensors.torch import load_file

        files = sorted((checkpoint / "model").glob("*.safetensors"))
        state = {k: v for f in files for k, v in load_file(str(f)).items()}
        adapter.model.load_state_dict(state)
    else:
        raise ValueError(f"checkpoint {checkpoint} holds neither lora/ nor model/ weights")
    adapter.clear_cache()


def load_model(name: str, **kwargs):
    """An adapter around a model name (samplers.models.load_adapter, which takes the same kwargs), or
    around a training run directory or one of its checkpoints: the run's base model with the
    checkpoint's weights, sampled with the run's settings (its dtype where `dtype` is `auto`) unless
    kwargs override them."""
    from samplers.models import load_adapter

    found = resolve_checkpoint(name)
    if found is None:
        return load_adapter(name, **kwargs)
    base, checkpoint, settings = found
    family, dtype, device = (kwargs.pop(k, default) for k, default in DEVICE_DEFAULTS.items())
    options = {**settings, **{k: v for k, v in kwargs.items() if v is not None}}
    family = options.pop("family", None) or family
    run_dtype = options.pop("dtype", None)  # the run's weights dtype
    dtype = run_dtype if dtype == "auto" and run_dtype else dtype
    options.pop("device", None)
    adapter = load_adapter(base, family=family, dtype=dtype, device=device, **options)
    apply_checkpoint(adapter, checkpoint)
    adapter.name = name
    return adapter


def read_config(run_dir: Path) -> dict:
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
