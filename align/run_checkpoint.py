"""A training run's checkpoints: what `align train --resume` continues from, written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from align.checkpoint import (
    atomic_directory,
    commit_directory,
    load_state,
    nonfinite_values,
    rng_state,
    save_state,
    set_rng_state,
    staging_directory,
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
    if run.sharding == "fsdp2":
        return _save_sharded(run, directory)
    if run.main:
        state = {
            **_run_state(run),
            "trainable": run.policy.trainable_state(),
            "optimizer": run.optimizer.state_dict(),
            "ema": run.ema.shadow if run.ema is not None else None,
            # a text run's KL anchor after its warm start (anchor_reference); None: the base model
            "reference": getattr(run.policy, "reference_state", None),
            "rng": rng_state(),
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
            (staging / "checkpoint.json").write_text(json.dumps(_checkpoint_info(run), indent=2))
            write_manifest(staging)
        kill_point("saved")
        _prune(run)
    run.accelerator.wait_for_everyone()
    return directory


def _prune(run) -> None:
    """Keep the last train.keep_checkpoints checkpoints."""
    for old in checkpoints(run.out)[: -run.config.train.keep_checkpoints]:
        shutil.rmtree(old)


def _run_state(run) -> dict:
    """What the main process saves beside the weights and the optimiser."""
    return {
        "epoch": run.epoch,
        "step": run.step,
        "rewards": run.rewards.state_dict(),
        "algorithm": run.algorithm.state_dict(),
        "monitors": run.monitors.state_dict(),
        "summary": run.summary,
        "nonfinite_in_a_row": run.nonfinite_in_a_row,
        "ema_saved": run.ema is not None,
    }


def _save_sharded(run, directory: Path) -> Path:
    """A sharded run's checkpoint (train.sharding=fsdp2), written by every process together: its shards
    of the trainable weights, the optimiser state and the EMA through torch.distributed.checkpoint
    (`sharded/`), its own RNG (`rng-RANK`); the main process adds the rest of the run's state and the
    weights gathered whole in their pipelines' format, then the manifest, then renames the staging
    directory into place. With one process (no process group) the same files are written, so a run
    saved on any number of processes resumes on any other."""
    import torch
    from accelerate.utils import broadcast_object_list

    from align.sharding import SHARDED_DIR, dcp_save, local_tree, sharded_state, whole

    model = run.adapter.model
    tensors = sharded_state(model, run.optimizer, run.policy, run.ema)
    state = _run_state(run)
    bad = nonfinite_values({"shards": local_tree(tensors), **state, "summary": None})
    count = torch.tensor([len(bad)], dtype=torch.float32, device=run.accelerator.device)  # NCCL: on the GPU
    if run.accelerator.reduce(count, "sum").item():
        where = f"{bad[0]} holds NaN or inf" if bad else "another process's shard holds NaN or inf"
        raise RunFault(f"refusing to save {directory}: {where}; the earlier checkpoints are as they were")
    # the weights whole, for their pipeline: every process gathers each tensor (a collective), only
    # the main one keeps it, in host memory
    lora = run.policy.trainable == "lora"
    named = run.policy.named_parameters() if lora else model.state_dict()
    weights = {}
    for name, tensor in named.items():
        gathered = whole(tensor.detach())
        if run.main:
            weights[name] = gathered.cpu()
    staging = Path(broadcast_object_list([str(staging_directory(directory)) if run.main else None])[0])
    try:
        dcp_save(tensors, staging / SHARDED_DIR)
        save_state(staging, {"rng": rng_state()}, name=f"rng-{run.accelerator.process_index}")
        if run.main:
            run.policy.save_weights(staging, state=weights)
            kill_point("checkpoint")
            save_state(staging, state)
            (staging / "checkpoint.json").write_text(json.dumps(_checkpoint_info(run), indent=2))
        run.accelerator.wait_for_everyone()  # every process's files are written
        if run.main:
            write_manifest(staging)
            commit_directory(staging, directory)
            kill_point("saved")
            _prune(run)
    except BaseException:
        if run.main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    run.accelerator.wait_for_everyone()
    return directory


def _checkpoint_info(run) -> dict:
    return {
        "base_model": run.config.model.name,
        "epoch": run.epoch,
        "trainable": run.config.train.trainable,
        "adapter": run.modality.checkpoint_settings(run.config),
    }


def _load_sharded(run, directory: Path) -> None:
    """Continue from a `_save_sharded` checkpoint on however many processes this run has: the shards
    are read into this run's own tensors (resharded by torch.distributed.checkpoint)."""
    from align.sharding import SHARDED_DIR, dcp_load, load_optimizer, sharded_state

    state = load_state(directory)
    if state["ema_saved"] != (run.ema is not None):
        raise ValueError(
            f"{directory} was saved {'with' if state['ema_saved'] else 'without'} EMA; "
            "set train.ema_decay as the run that saved it had it"
        )
    model = run.adapter.model
    tensors = sharded_state(model, run.optimizer, run.policy, run.ema)
    dcp_load(tensors, directory / SHARDED_DIR)  # in place, into this run's tensors
    load_optimizer(model, run.optimizer, tensors["optimizer"])
    mine = f"rng-{run.accelerator.process_index}"
    if not (directory / f"{mine}.safetensors").is_file():  # a process the saving run did not have
        mine = "rng-0"
    set_rng_state(load_state(directory, name=mine)["rng"])
    _restore_run_state(run, state)


def _restore_run_state(run, state: dict) -> None:
    run.rewards.load_state_dict(state["rewards"])
    run.algorithm.load_state_dict(state["algorithm"])
    run.monitors.load_state_dict(state.get("monitors", {}))
    run.epoch, run.step, run.summary = state["epoch"], state["step"], state["summary"]
    run.scheduler = lr_scheduler(run.optimizer, run.config.train, run.epoch)
    run.nonfinite_in_a_row = state["nonfinite_in_a_row"]


def load_run_checkpoint(run, directory: Path) -> None:
    """Continue `run` exactly from a verified checkpoint: weights, optimiser, EMA, rewards, algorithm, RNG."""
    from align.sharding import SHARDED_DIR

    sharded = (directory / SHARDED_DIR).is_dir()
    wanted = "fsdp2" if sharded else "none"
    if run.sharding != wanted:
        anywhere = " (on any number of processes)" if sharded else ""
        raise ValueError(
            f"{directory} was saved with train.sharding={wanted}; resume it with train.sharding={wanted}{anywhere}"
        )
    if sharded:
        return _load_sharded(run, directory)
    state = load_state(directory)
    run.policy.load_trainable_state(state["trainable"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema is not None:
        if state["ema"] is None:
            raise ValueError(f"{directory} was saved without EMA but train.ema_decay > 0")
        run.ema.load(state["ema"])
    if state.get("reference") is not None:
        run.policy.reference_state = state["reference"]
    set_rng_state(state["rng"])
    _restore_run_state(run, state)


def run_checkpoint_bytes(run) -> int:
    """About what a checkpoint takes on disk: the weights twice (to load, to resume), the optimiser
    state and the EMA."""
    ema = run.ema.shadow if run.ema is not None else {}
    weights = tensor_bytes(run.policy.named_parameters())
    return 2 * weights + tensor_bytes(run.optimizer.state_dict()["state"]) + tensor_bytes(ema)
