"""Metrics go through accelerate's experiment trackers: TensorBoard, and wandb, which must run offline
(WANDB_MODE=offline) with no account and no network."""

import json
from pathlib import Path

import pytest

from align.config import load_config
from align.loop import train
from align.runs import read_metrics

TINY = Path(__file__).parents[1] / "configs" / "tiny"


def test_tensorboard_and_offline_wandb_log_every_epoch(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [
        "train.num_epochs=2",
        "logging.tensorboard=true",
        "logging.wandb=true",
        "logging.image_every=1",
    ]
    train(load_config(TINY / "flow-grpo.yaml", overrides), tmp_path / "run")
    rewards = [m["reward"] for m in read_metrics(tmp_path / "run")]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward")] == [1, 2]
    assert [e.value for e in events.Scalars("reward")] == pytest.approx(rewards, rel=1e-6)
    assert "samples" in events.Tags()["images"]
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (history,) = offline.glob("run-*.wandb")  # records whose values are JSON text, ready for `wandb sync`
    logged = history.read_bytes()
    assert all(json.dumps(reward).encode() in logged for reward in rewards)
    assert sorted(p.name.split("_")[1] for p in (offline / "files" / "media").rglob("samples_*.png")) == [
        "1",
        "2",
    ]
