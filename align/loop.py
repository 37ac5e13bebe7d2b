"""The one training loop. Straight-line: build, then per epoch collect -> train -> log -> checkpoint.

Algorithms plug in through align/algorithms/base.py; this file has no per-algorithm flags.
Distribution, mixed precision and gradient synchronisation go through accelerate; each process
owns whole prompt groups, and advantages are computed over the gathered groups.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from align.algorithms.base import ALGORITHMS, Collected, Context
from align.config import ExperimentConfig
from align.epochs import chunks, plan_epoch, training_prompts
from align.faults import LOCK_NAME, RunFault, disk_full, is_disk_full, kill_point, run_lock
from align.monitoring import Monitors
from align.optimisation import EMA, GradientAgreement, lr_scheduler, make_accelerator
from align.run_checkpoint import load_run_checkpoint, run_checkpoint_bytes, save_run_checkpoint
from align.run_files import (
    append_metrics,
    log_epoch,
    prepare_directory,
    read_statistics,
    resolve_resume,
    trackers,
    write_summary,
)
from align.sharding import place_for_training, whole
from gallery.plots import EVALUATED

# torch >= 2.6 computes the gradients' total norm on its own (get_total_norm) and clips with a given norm
# (clip_grads_with_norm_), so the NaN check's norm serves the clip; older torch takes separate passes.
# Tests switch these to take the older path.
TOTAL_NORM = hasattr(torch.nn.utils, "get_total_norm")
CLIP_WITH_NORM = hasattr(torch.nn.utils, "clip_grads_with_norm_")


class Run:
    """Everything one training run holds; `train()` below drives it. What it trains, its prompts and its
    evaluation come from the algorithm's modality (align/modality.py: images; align/text/modality.py: text)."""

    def __init__(self, config: ExperimentConfig, out: Path, accelerator=None):
        from rewards.combine import RewardSet

        self.config, self.out = config, Path(out)
        precision = {"no": "no", "fp16": "fp16", "bf16": "bf16"}[config.train.mixed_precision]
        self.accelerator = accelerator or make_accelerator(precision)
        device = self.accelerator.device
        torch.manual_seed(config.train.seed)  # same LoRA init on every process
        random.seed(config.train.seed)  # python's and numpy's global streams too (a reward may draw from them),
        np.random.seed(config.train.seed)  # so that a run is its seed, and a checkpoint resumes all three
        algorithm = ALGORITHMS.lookup(config.algorithm.name)
        self.modality = algorithm.modality(config, device)
        self.adapter, self.policy = self.modality.adapter, self.modality.policy
        terms = [(t.name, t.weight, t.args) for t in config.rewards.terms]
        if not terms:
            raise ValueError("rewards.terms is empty: give at least one reward to optimise")
        self.rewards = RewardSet(terms, config.rewards.normalise, str(device), config.rewards.remote_timeout)
        self.monitors = Monitors(config.monitor, self.rewards.rewards, self.accelerator)
        self.context = Context(config, self.adapter, self.policy, self.rewards, self.accelerator)
        self.algorithm = algorithm(self.context)
        self.sharding, self.sharded, self.network, self.optimizer = place_for_training(
            config, self.modality, self.accelerator, self.adapter.model, self.policy, precision
        )
        self.scheduler = lr_scheduler(self.optimizer, config.train)
        # compiled for every forward of the run (sampling, training, evaluation): once per batch shape
        # and grad mode, minutes on a CPU, then fused kernels; the weights stay the model's own
        self.adapter.network = torch.compile(self.network) if config.model.compile else self.network
        decay = config.train.ema_decay
        self.ema = EMA(self.policy.named_parameters(), decay, config.train.ema_device) if decay else None
        self.prompts = training_prompts(self.modality, config.train)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        self.summary: dict = {}
        self.nonfinite_in_a_row = 0  # optimiser steps skipped in a row for a NaN or inf

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def evaluates(self) -> bool:
        """Whether this process evaluates: the main one, or every one of a sharded run (each forward
        gathers the shards from all processes; they evaluate alike and the main one writes)."""
        return self.main or self.sharded

    # --- one epoch ----------------------------------------------------------------------------

    def train_epoch(self) -> dict:
        config, epoch = self.config, self.epoch
        plan = plan_epoch(
            self.prompts, config, epoch, self.accelerator.process_index, self.accelerator.num_processes
        )
        start = time.perf_counter()
        ramped = [term for term in config.rewards.terms if term.ramp]
        if ramped:  # a curriculum of objectives: this epoch's weights
            self.rewards.weights.update({term.name: term.weight_at(epoch) for term in ramped})
        kept = self.algorithm.state_dict()
        batch = self.algorithm.collect(
            epoch, plan.prompts, plan.group_ids.to(self.accelerator.device), plan.seeds
        )
        kill_point("sampled")
        collected = time.perf_counter()
        finite_rewards = self._finite_rewards(batch)
        if not finite_rewards:  # not trained on, nor left in the algorithm's state (DDPO's prompt statistics)
            self.algorithm.load_state_dict(kept)
        generator = torch.Generator().manual_seed(config.train.seed * 104_729 + epoch)
        stats: dict[str, list[float]] = {}
        skipped: dict[str, int] = {}  # optimiser steps skipped for a NaN or inf, by source
        for _ in range(config.train.inner_epochs):
            for chunk in chunks(self.algorithm.micro_batches(batch, generator), config.train.steps_per_pass):
                if finite_rewards:
                    self._optimiser_step(batch, chunk, stats, skipped)
                else:
                    self._skip("reward", skipped)
        if self.ema is not None:
            self.ema.update(self.policy.named_parameters())
        trained = time.perf_counter()
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "processes": self.accelerator.num_processes,
            "skipped_steps": sum(skipped.values()),
        }
        if skipped:
            record["skipped_by"] = skipped
        if ramped:  # recorded, then back to the full weights that evaluations score with
            record["reward_weights"] = dict(self.rewards.weights)
            self.rewards.weights.update({term.name: term.weight for term in ramped})
        if batch.values is not None:  # offline preference data has no rewards of its own
            record["rewards"] = {
                name: {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0}
                for name, v in ((n, self.context.gather(v)) for n, v in batch.values.items())
            }
        record.update(batch.stats)
        record.update({k: sum(v) / len(v) for k, v in read_statistics(stats).items()})
        images = batch.images
        if images is not None:
            record.update(self.monitors.observe(images, plan.prompts))
        samples = config.train.batch_size * self.accelerator.num_processes
        self.scheduler.step()  # the next epoch's lr
        record["time/training"] = trained - collected
        record["time/epoch"] = trained - start
        record["samples_per_second"] = samples / (trained - start)
        return record | {"_images": images, "_prompts": plan.prompts}

    def _optimiser_step(self, batch, chunk: list, stats: dict, skipped: dict) -> None:
        """One optimiser step on the units of `chunk`: their losses' gradients accumulated (synchronised
        across processes on the last), then checked for NaN or inf, clipped and applied."""
        config = self.config
        losses = []
        agreement = None
        if config.logging.gradient_agreement and len(chunk) > 1:  # one unit has nothing to agree with
            agreement = GradientAgreement(self.policy.parameters())
        for index, unit in enumerate(chunk):
            last = index == len(chunk) - 1
            sync = self.accelerator.no_sync(self.network) if not last else contextlib.nullcontext()
            with sync:
                loss, unit_stats = self.algorithm.loss(batch, unit)
                losses.append(loss.detach())
                self.accelerator.backward(loss / len(chunk))
            if agreement is not None:
                agreement.add()
            for key, value in unit_stats.items():
                stats.setdefault(key, []).append(value)
        if agreement is not None and (value := agreement.value()) is not None:
            stats.setdefault("grad_agreement", []).append(value)
        source, norm = self._nonfinite(losses)
        if source is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self._skip(source, skipped)
            return
        if config.train.max_grad_norm is not None:
            norm = self._clip(config.train.max_grad_norm, norm)
            stats.setdefault("grad_norm", []).append(norm.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.nonfinite_in_a_row = 0
        kill_point("step")

    # --- NaN and inf ------------------------------------------------------------------------------
    # A step with a NaN or inf in a reward, the loss or the gradients is skipped, not taken: one
    # poisoned update would leave NaN in every weight and in the optimiser's moments for good. A NaN
    # reward skips the whole batch's update rather than only its own sample, whose group would be left
    # short (and whose advantages depend on the rest of it). Every process decides alike.

    def _finite_rewards(self, batch: Collected) -> bool:
        values = (batch.values or {}).values()
        return all(bool(torch.isfinite(self.context.gather(v.detach())).all()) for v in values)

    def _nonfinite(self, losses: list[torch.Tensor]) -> tuple[str | None, torch.Tensor | None]:
        """(why the accumulated step must be skipped, "loss" or "gradient", or None to take it;
        the gradients' total norm where it was computed, for `_clip`)."""
        bad_loss = ~torch.stack(losses).isfinite().all()
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        bad_gradient = torch.zeros_like(bad_loss)
        norm = None
        if grads and self.accelerator.scaler is None:  # fp16's grad scaler skips overflows itself
            # the total norm is NaN or inf where some element is (or where it overflows, past 3e38: no
            # step to take either); one fused pass, where per-tensor isfinite().all() made three or four
            if TOTAL_NORM:
                # sharded gradients: the total over every process's shards
                norm = whole(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False))
                finite = norm.isfinite()
            else:
                finite = torch.stack([g.isfinite().all() for g in grads]).all()
            bad_gradient = ~finite.to(bad_loss.device)
        flags = torch.stack([bad_loss, bad_gradient]).float()
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, "sum")
        bad_loss, bad_gradient = flags.tolist()
        return ("loss" if bad_loss else "gradient" if bad_gradient else None), norm

    def _clip(self, max_norm: float, norm: torch.Tensor | None) -> torch.Tensor:
        """Clip the gradients to `max_norm`; returns their norm before clipping.

        The NaN check's norm is the clip's own where the gradients are whole, unscaled tensors on
        every process (one process, or DDP after its all-reduce), so the clip reuses it: one pass over
        the gradients, not two. Sharded (FSDP), DeepSpeed and XLA steps clip through accelerate.
        """
        from accelerate.utils import DistributedType

        # accelerate's own sharding clips by itself; ours (self.sharded) summed the norm in _nonfinite
        split = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.XLA)
        complete = self.sharded or self.accelerator.distributed_type not in split
        if norm is None or not complete or not CLIP_WITH_NORM:
            return self.accelerator.clip_grad_norm_(self.policy.parameters(), max_norm)
        torch.nn.utils.clip_grads_with_norm_(self.policy.parameters(), max_norm, norm)
        return norm

    def _skip(self, source: str, skipped: dict[str, int]) -> None:
        skipped[source] = skipped.get(source, 0) + 1
        self.nonfinite_in_a_row += 1
        limit = self.config.train.max_nonfinite_steps
        if self.nonfinite_in_a_row >= limit:
            raise RunFault(
                f"stopped: {self.nonfinite_in_a_row} optimiser steps in a row skipped for a NaN or inf, the "
                f"last in the {source} (train.max_nonfinite_steps={limit}); the checkpoints hold no NaN: "
                "fix the cause (a reward that fails, too high a train.lr) and continue with --resume"
            )

    # --- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        saved = None
        if self.ema is not None:
            saved = self.policy.trainable_state()
            self.policy.load_trainable_state(self.ema.shadow)
        try:
            summary = self.modality.evaluate(self)
        finally:
            if saved is not None:
                self.policy.load_trainable_state(saved)
        summary["epoch"] = self.epoch
        return summary

    # --- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        return save_run_checkpoint(self)

    def load_checkpoint(self, directory: Path) -> None:
        load_run_checkpoint(self, directory)

    def checkpoint_bytes(self) -> int:
        return run_checkpoint_bytes(self)


def train(
    config: ExperimentConfig,
    out: str | Path,
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    accelerator=None,
    progress: bool | None = None,
    base: dict | None = None,
) -> dict:
    """Train per `config` into the run directory `out`; returns the run summary.

    resume      a run directory or checkpoint to continue exactly (its epoch, optimiser, RNG, ...)
    stop_after  leave after this many epochs in this call (a checkpoint is written first)
    base        the base model's evaluation under this config's model and eval settings, when it was
                already measured (the demo's runs share one); otherwise the run measures it first
    """
    out = Path(out)
    checkpoint = resolve_resume(Path(resume), out) if resume is not None else None
    # the lock is taken before the model loads; the launcher's RANK names the main process until then
    main = accelerator.is_main_process if accelerator is not None else os.environ.get("RANK", "0") == "0"
    with run_lock(out) if main else contextlib.nullcontext():
        if resume is None and out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
            raise ValueError(
                f"{out} is not empty; pass --resume {out} to continue it, or choose another --out"
            )
        run = Run(config, out, accelerator)
        try:
            return _train(run, checkpoint, stop_after=stop_after, progress=progress, base=base)
        except OSError as error:
            if not is_disk_full(error):
                raise
            raise disk_full(out, run.checkpoint_bytes()) from error


def _warm_start(run: Run) -> None:
    """A text run's rejection-sampling fine-tuning before its first epoch (the modality's `warm_start`),
    the EMA restarted from its weights, evaluated and recorded as summary.json's "rft"."""
    warm_start = getattr(run.modality, "warm_start", None)
    warmed = warm_start(run) if warm_start is not None else None
    if warmed is None:
        return
    train = run.config.train
    if run.ema is not None:  # the average starts from the warm-started weights
        run.ema = EMA(run.policy.named_parameters(), train.ema_decay, train.ema_device)
    if run.evaluates:
        warmed["evaluation"] = run.evaluate()
    run.summary["rft"] = warmed
    if run.main:
        write_summary(run.out, run.summary)


def _train(run: Run, checkpoint: Path | None, *, stop_after, progress, base) -> dict:
    config, out = run.config, run.out
    if checkpoint is not None:
        run.load_checkpoint(checkpoint)
    if run.main:
        prepare_directory(run, fresh=checkpoint is None)
    logs = trackers(config, out, run.main, first_epoch=run.epoch + 1)
    if "base" not in run.summary and run.evaluates:
        run.summary["base"] = base if base is not None else run.evaluate()
        if run.main:
            kill_point("evaluated")
            write_summary(out, run.summary)
    if run.epoch == 0 and "rft" not in run.summary:
        _warm_start(run)
    show = config.logging.progress if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(
        total=config.train.num_epochs, initial=run.epoch, desc="train", disable=not (show and run.main)
    )
    epochs_here = 0
    while run.epoch < config.train.num_epochs and "stopped" not in run.summary and (
        stop_after is None or epochs_here < stop_after
    ):
        record = run.train_epoch()
        images, prompts = record.pop("_images"), record.pop("_prompts")
        epochs_here += 1
        if config.monitor.stop and record.get("monitor_flags"):  # early stopping: this epoch is the last
            run.summary["stopped"] = {"epoch": run.epoch, "flags": record["monitor_flags"]}
        last = run.epoch == config.train.num_epochs or "stopped" in run.summary
        every = config.train.eval_every
        if run.evaluates and (last or (every and run.epoch % every == 0)):
            run.summary["aligned"] = run.evaluate()
            record["eval"] = {k: v for k, v in run.summary["aligned"].items() if k in EVALUATED}
            if run.main:
                kill_point("evaluated")
                write_summary(out, run.summary)
        if run.main:
            append_metrics(out / "metrics.jsonl", record)
            log_epoch(logs, record, images, prompts, config)
            kill_point("logged")
        bar.update(1)
        if "reward" in record:
            bar.set_postfix(reward=f"{record['reward']:.3f}")
        every_ckpt = config.train.checkpoint_every
        stopping = stop_after is not None and epochs_here >= stop_after
        if last or stopping or (every_ckpt and run.epoch % every_ckpt == 0):
            run.save_checkpoint()  # the trackers flushed what they logged: a resume hides only what follows
    bar.close()
    for tracker in logs:
        tracker.finish()
    return run.summary
