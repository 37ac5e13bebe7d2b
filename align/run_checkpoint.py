"""A training run's checkpoints: what `align train --resume` continues from, written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from align.checkpoint import (
    atomic_directory,
    load_state,
    nonfinite_values,
    rng_state,
    save_state,
    set_rng_state,
    tensor_bytes,
    write_manifest,
)
from align.faults import RunFault, kill_point
from align.optimisation import lr_scheduler
from align.runs import checkpoint_name, checkpoints


def save_run_checkpoint(run) -> Path:
    """The run's whole state under OUT/checkpoints/epoch-N, atomically (a staging directory, the manifest
    last); weights in the format their pipelines load. Keeps the last train.keep_checkpoints."""
    directory = run.out / "checkpoints" / checkpoint_name(run.epoch)
    if run.main:
        state = {
            "epoch": run.epoch,
            "step": run.step,
            "trainable": run.policy.trainable_state(),
            "optimizer": run.optimizer.state_dict(),
            "ema": run.ema.shadow if run.ema is not None else None,
            "rewards": run.rewards.state_dict(),
            "algorithm": run.algorithm.state_dict(),
            "rng": rng_state(),
            "summary": run.summary,
            "nonfinite_in_a_row": run.nonfinite_in_a_row,
        }
        # not the summary: it reports evaluations (NaN accuracy for prompts the toy world cannot judge)
        bad = nonfinite_values({k: v for k, v in state.items() if k != "summary"})
        if bad:
            raise RunFault(
                f"refusing to save {directory}: {bad[0]} holds NaN or inf ({len(bad)} values in all); "
                "the earlier checkpoints are as they were"
            )
        with atomic_directory(directory) as staging:
            run.policy.save_weights(staging)
            kill_point("checkpoint")
            save_state(staging, state)
            info = {
                "base_model": run.config.model.name,
                "epoch": run.epoch,
                "trainable": run.config.train.trainable,
                "adapter": run.modality.checkpoint_settings(run.config),
            }
            (staging / "checkpoint.json").write_text(json.dumps(info, indent=2))
            write_manifest(staging)
        kill_point("saved")
        for old in checkpoints(run.out)[: -run.config.train.keep_checkpoints]:
            shutil.rmtree(old)
    run.accelerator.wait_for_everyone()
    return directory

def load_run_checkpoint(run, directory: Path) -> None:
    """Continue `run` exactly from a verified checkpoint: weights, optimiser, EMA, rewards, algorithm, RNG."""
    state = load_state(directory)
    run.policy.load_trainable_state(state["trainable"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema is not None:
        if state["ema"] is None:
            raise ValueError(f"{directory} was saved without EMA but train.ema_decay > 0")
        run.ema.shadow = {k: v.clone() for k, v in state["ema"].items()}
    run.rewards.load_state_dict(state["rewards"])
    run.algorithm.load_state_dict(state["algorithm"])
    set_rng_state(state["rng"])
    run.epoch, run.step, run.summary = state["epoch"], state["step"], state["summary"]
    run.scheduler = lr_scheduler(run.optimizer, run.config.train, run.epoch)
    run.nonfinite_in_a_row = state["nonfinite_in_a_row"]

def run_checkpoint_bytes(run) -> int:
    """About what a checkpoint takes on disk: the weights twice (to load, to resume), the optimiser
    state and the EMA."""
    ema = run.ema.shadow if run.ema is not None else {}
    weights = tensor_bytes(run.policy.named_parameters())
    return 2 * weights + tensor_bytes(run.optimizer.state_dict()["state"]) + tensor_bytes(ema)
