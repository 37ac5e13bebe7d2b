"""The one training loop. Straight-line: build, then per epoch collect -> train -> log -> checkpoint.

Algorithms plug in through align/algorithms/base.py; this file has no per-algorithm flags.
Distribution, mixed precision and gradient synchronisation go through accelerate; each process
owns whole prompt groups, and advantages are computed over the gathered groups.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from align.algorithms.base import ALGORITHMS, Collected, Context
from align.checkpoint import (
    atomic_directory,
    atomic_write_text,
    load_state,
    nonfinite_values,
    remove_staging,
    rng_state,
    save_state,
    set_rng_state,
    tensor_bytes,
    verify_checkpoint,
    write_manifest,
)
from align.config import ExperimentConfig, config_to_data
from align.faults import LOCK_NAME, RunFault, disk_full, is_disk_full, kill_point, run_lock
from align.runs import checkpoint_name, checkpoints, is_run


@dataclass
class EpochPlan:
    prompts: list[str]  # this process's prompts, group_size copies each
    group_ids: torch.Tensor  # global group index of each sample
    seeds: list[int]  # one sampling seed per sample (global sample index based)


def lr_scheduler(optimizer, settings, epochs_done: int = 0):
    """train.lr_schedule as one of transformers' schedules, stepped once per epoch. Epoch e (0-based)
    trains at step e + 1 of a schedule with warmup_epochs + 1 warmup steps over num_epochs steps: the
    warmup rises as lr (e + 1) / (warmup_epochs + 1), the cosine falls from lr at the first epoch after
    the warmup to lr_final_fraction x lr at the last. The lr is a function of the epoch alone, so a
    resumed run builds the schedule at its epoch (`epochs_done`) with nothing of it in the checkpoint."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    for group in optimizer.param_groups:
        group["initial_lr"] = settings.lr  # what the schedule scales, whatever lr a checkpoint restored
    warmup = settings.warmup_epochs + 1
    if settings.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup, last_epoch=epochs_done)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        warmup,
        settings.num_epochs,
        last_epoch=epochs_done,
        min_lr_rate=settings.lr_final_fraction,
    )


def plan_epoch(
    prompts: list[str], config: ExperimentConfig, epoch: int, process: int, processes: int
) -> EpochPlan:
    """Prompts of an epoch: a seeded shuffled stream of the prompt set, cut into whole groups;
    process k takes the k-th contiguous block of groups. Seeds depend only on the global index,
    so a batch reproduces identically on any number of processes."""
    train = config.train
    groups_per_process = train.batch_size // train.group_size
    total = groups_per_process * processes
    stream, cycle = [], 0
    while len(stream) < (epoch + 1) * total:
        order = list(prompts)
        random.Random(train.seed * 1_000_003 + cycle).shuffle(order)
        stream += order
        cycle += 1
    chosen = stream[epoch * total : (epoch + 1) * total]
    first = process * groups_per_process
    local, group_ids, seeds = [], [], []
    for g in range(first, first + groups_per_process):
        for j in range(train.group_size):
            local.append(chosen[g])
            group_ids.append(g)
            seeds.append(train.seed * 10_000_019 + epoch * 1_000_003 + g * train.group_size + j)
    return EpochPlan(local, torch.tensor(group_ids), seeds)


def make_accelerator(mixed_precision: str, device: str = "auto"):
    """accelerate's Accelerator; a multi-process launch (`accelerate launch --multi_gpu` or torchrun)
    on a machine without CUDA runs its processes on the CPU over gloo. (`accelerate launch --cpu`
    starts a single process unless it is given an MPI hostfile.) `device` (auto, cpu, cuda, mps) is
    checked as every command checks it; cpu keeps the run on the CPU beside a GPU."""
    import os

    from accelerate import Accelerator

    from samplers.devices import resolve_device

    chosen = resolve_device(device)
    if chosen.index is not None:
        raise ValueError(
            f"device {device!r}: accelerate places training; pick the GPU with CUDA_VISIBLE_DEVICES"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = (world > 1 and not torch.cuda.is_available()) or chosen.type == "cpu"
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _chunks(units: list, count: int) -> list[list]:
    """`units` cut into `count` contiguous, nearly equal chunks (fewer if there are fewer units)."""
    count = max(1, min(count, len(units)))
    size, extra = divmod(len(units), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [units[bounds[i] : bounds[i + 1]] for i in range(count)]


class GradientAgreement:
    """Do the micro-batch gradients of one optimiser step point the same way? With g_u the gradient of
    unit u (read off the accumulating .grad) and G = sum g_u over n units:

        agreement = (|G|^2 - sum |g_u|^2) / ((n - 1) sum |g_u|^2)

    the mean pairwise inner product over the mean squared norm: about 0 when the units' gradients are
    independent noise, 1 when they all agree. A recipe whose advantages carry no signal shows ~0.

    Each g_u and its squared norm are computed in float32 (in place for float32 gradients; half
    precision ones are widened, which keeps their difference exact) and the squares summed in
    float64: the cancellation in |G|^2 - sum |g_u|^2 happens between these few scalars, so no
    float64 copy of a gradient is made.
    """

    def __init__(self, parameters):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.previous = [torch.zeros_like(p) for p in self.parameters]
        self.squares = torch.zeros((), dtype=torch.float64)  # sum of |g_u|^2, kept on the device until read
        self.units = 0

    @torch.no_grad()
    def add(self) -> None:
        for param, previous in zip(self.parameters, self.previous):
            if param.grad is None:
                continue
            if param.grad.dtype in (torch.float16, torch.bfloat16):
                unit = param.grad.float() - previous.float()
            else:
                unit = previous.neg_().add_(param.grad)  # g_u, in place of the previous sum
            norm = torch.linalg.vector_norm(unit).double()
            self.squares = self.squares.to(norm.device) + norm * norm
            previous.copy_(param.grad)
        self.units += 1

    def value(self) -> float | None:
        squares = float(self.squares)
        if self.units < 2 or squares == 0:
            return None
        total = sum(
            float(
                torch.linalg.vector_norm(p, dtype=torch.promote_types(p.dtype, torch.float32)).double() ** 2
            )
            for p in self.previous
        )
        return (total - squares) / ((self.units - 1) * squares)


# torch >= 2.6 computes the gradients' total norm on its own (get_total_norm) and clips with a given norm
# (clip_grads_with_norm_), so the NaN check's norm serves the clip; older torch takes separate passes.
# Tests switch these to take the older path.
TOTAL_NORM = hasattr(torch.nn.utils, "get_total_norm")
CLIP_WITH_NORM = hasattr(torch.nn.utils, "clip_grads_with_norm_")

FUSED_ADAMW_DEVICES = ("cpu", "cuda")
FUSED_ADAMW_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def adamw(parameters: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel where every parameter allows it (one pass over each tensor
    instead of a chain of element-wise ops: 0.18 s against 0.68 s a step for SmolLM2-135M's 148 M
    parameters on one CPU thread); the same update up to float rounding."""
    fused = bool(parameters) and all(
        p.device.type in FUSED_ADAMW_DEVICES and p.dtype in FUSED_ADAMW_DTYPES for p in parameters
    )
    if fused:
        try:
            return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:  # torch < 2.4 fuses on CUDA only
            pass
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


class EMA:
    """Exponential moving average of the trainable parameters (swapped in for evaluation), updated by
    torch's own EMA rule (torch.optim.swa_utils: one fused lerp over every tensor)."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter], decay: float):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in parameters.items()}
        self._average = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        self._average([self.shadow[n] for n in parameters], [p.detach() for p in parameters.values()], None)


class Run:
    """Everything one training run holds; `train()` below drives it. What it trains, its prompts and its
    evaluation come from the algorithm's pathway (align/pathway.py: images; align/text/pathway.py: text)."""

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
        self.pathway = algorithm.pathway(config, device)
        self.adapter, self.policy = self.pathway.adapter, self.pathway.policy
        terms = [(t.name, t.weight, t.args) for t in config.rewards.terms]
        if not terms:
            raise ValueError("rewards.terms is empty: give at least one reward to optimise")
        self.rewards = RewardSet(terms, normalise=config.rewards.normalise, device=str(device))
        self.context = Context(config, self.adapter, self.policy, self.rewards, self.accelerator)
        self.algorithm = algorithm(self.context)
        self.optimizer = adamw(list(self.policy.parameters()), config.train.lr, config.train.weight_decay)
        self.network, self.optimizer = self.accelerator.prepare(self.adapter.model, self.optimizer)
        self.scheduler = lr_scheduler(self.optimizer, config.train)
        # compiled for every forward of the run (sampling, training, evaluation): once per batch shape
        # and grad mode, minutes on a CPU, then fused kernels; the weights stay the model's own
        self.adapter.network = torch.compile(self.network) if config.model.compile else self.network
        self.ema = (
            EMA(self.policy.named_parameters(), config.train.ema_decay) if config.train.ema_decay else None
        )
        self.prompts = self.pathway.prompts(config.train.prompts)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        self.summary: dict = {}
        self.nonfinite_in_a_row = 0  # optimiser steps skipped in a row for a NaN or inf

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    # --- one epoch ----------------------------------------------------------------------------

    def train_epoch(self) -> dict:
        config, epoch = self.config, self.epoch
        plan = plan_epoch(
            self.prompts, config, epoch, self.accelerator.process_index, self.accelerator.num_processes
        )
        start = time.perf_counter()
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
            units = self.algorithm.units(batch, generator)
            for chunk in _chunks(units, config.train.steps_per_pass):
                if not finite_rewards:
                    self._skip("reward", skipped)
                    continue
                losses = []
                agreement = None
                if config.logging.gradient_agreement and len(chunk) > 1:  # one unit has nothing to agree with
                    agreement = GradientAgreement(self.policy.parameters())
                for index, unit in enumerate(chunk):
                    last = index == len(chunk) - 1
                    sync = self.accelerator.no_sync(self.network) if not last else _nothing()
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
                    continue
                if config.train.max_grad_norm is not None:
                    norm = self._clip(config.train.max_grad_norm, norm)
                    stats.setdefault("grad_norm", []).append(float(norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.nonfinite_in_a_row = 0
                kill_point("step")
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
        if batch.values is not None:  # offline preference data has no rewards of its own
            record["rewards"] = {
                name: {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0}
                for name, v in ((n, self.context.gather(v)) for n, v in batch.values.items())
            }
        record.update(batch.stats)
        record.update({k: sum(v) / len(v) for k, v in stats.items()})
        images = batch.images
        if images is not None:
            record["monitors"] = _monitors(images)
        samples = config.train.batch_size * self.accelerator.num_processes
        self.scheduler.step()  # the next epoch's lr
        record["time/training"] = trained - collected
        record["time/epoch"] = trained - start
        record["samples_per_second"] = samples / (trained - start)
        return record | {"_images": images, "_prompts": plan.prompts}

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
                norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
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

        whole = self.accelerator.distributed_type not in (
            DistributedType.FSDP,
            DistributedType.DEEPSPEED,
            DistributedType.XLA,
        )
        if norm is None or not whole or not CLIP_WITH_NORM:
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
            summary = self.pathway.evaluate(self)
        finally:
            if saved is not None:
                self.policy.load_trainable_state(saved)
        summary["epoch"] = self.epoch
        return summary

    # --- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        directory = self.out / "checkpoints" / checkpoint_name(self.epoch)
        if self.main:
            state = {
                "epoch": self.epoch,
                "step": self.step,
                "trainable": self.policy.trainable_state(),
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.shadow if self.ema is not None else None,
                "rewards": self.rewards.state_dict(),
                "algorithm": self.algorithm.state_dict(),
                "rng": rng_state(),
                "summary": self.summary,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
            }
            # not the summary: it reports evaluations (NaN accuracy for prompts the toy world cannot judge)
            bad = nonfinite_values({k: v for k, v in state.items() if k != "summary"})
            if bad:
                raise RunFault(
                    f"refusing to save {directory}: {bad[0]} holds NaN or inf ({len(bad)} values in all); "
                    "the earlier checkpoints are as they were"
                )
            with atomic_directory(directory) as staging:
                self.policy.save_weights(staging)
                kill_point("checkpoint")
                save_state(staging, state)
                info = {
                    "base_model": self.config.model.name,
                    "epoch": self.epoch,
                    "trainable": self.config.train.trainable,
                    "adapter": self.pathway.checkpoint_settings(self.config),
                }
                (staging / "checkpoint.json").write_text(json.dumps(info, indent=2))
                write_manifest(staging)
            kill_point("saved")
            for old in checkpoints(self.out)[: -self.config.train.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return directory

    def load_checkpoint(self, directory: Path) -> None:
        state = load_state(directory)
        self.policy.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"{directory} was saved without EMA but train.ema_decay > 0")
            self.ema.shadow = {k: v.clone() for k, v in state["ema"].items()}
        self.rewards.load_state_dict(state["rewards"])
        self.algorithm.load_state_dict(state["algorithm"])
        set_rng_state(state["rng"])
        self.epoch, self.step, self.summary = state["epoch"], state["step"], state["summary"]
        self.scheduler = lr_scheduler(self.optimizer, self.config.train, self.epoch)
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]

    def checkpoint_bytes(self) -> int:
        """About what a checkpoint takes on disk: the weights twice (to load, to resume), the optimiser
        state and the EMA."""
        ema = self.ema.shadow if self.ema is not None else {}
        weights = tensor_bytes(self.policy.named_parameters())
        return 2 * weights + tensor_bytes(self.optimizer.state_dict()["state"]) + tensor_bytes(ema)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _monitors(images: torch.Tensor) -> dict:
    from rewards.monitors import hacking_monitors

    return hacking_monitors(images)


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


def _train(run: Run, checkpoint: Path | None, *, stop_after, progress, base) -> dict:
    config, out = run.config, run.out
    if checkpoint is not None:
        run.load_checkpoint(checkpoint)
    if run.main:
        _prepare_directory(run, fresh=checkpoint is None)
    trackers = _trackers(config, out, run.main, first_epoch=run.epoch + 1)
    if "base" not in run.summary and run.main:
        run.summary["base"] = base if base is not None else run.evaluate()
        kill_point("evaluated")
        _write_summary(out, run.summary)
    show = config.logging.progress if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(
        total=config.train.num_epochs, initial=run.epoch, desc="train", disable=not (show and run.main)
    )
    epochs_here = 0
    while run.epoch < config.train.num_epochs and (stop_after is None or epochs_here < stop_after):
        record = run.train_epoch()
        images, prompts = record.pop("_images"), record.pop("_prompts")
        epochs_here += 1
        last = run.epoch == config.train.num_epochs
        every = config.train.eval_every
        if run.main and (last or (every and run.epoch % every == 0)):
            run.summary["aligned"] = run.evaluate()
            kill_point("evaluated")
            record["eval"] = {k: run.summary["aligned"][k] for k in ("accuracy", "score", "rewards")}
            _write_summary(out, run.summary)
        if run.main:
            _append_metrics(out / "metrics.jsonl", record)
            _log(trackers, record, images, prompts, config)
            kill_point("logged")
        bar.update(1)
        if "reward" in record:
            bar.set_postfix(reward=f"{record['reward']:.3f}")
        every_ckpt = config.train.checkpoint_every
        stopping = stop_after is not None and epochs_here >= stop_after
        if last or stopping or (every_ckpt and run.epoch % every_ckpt == 0):
            run.save_checkpoint()  # the trackers flushed what they logged: a resume hides only what follows
    bar.close()
    for tracker in trackers:
        tracker.finish()
    return run.summary


def _prepare_directory(run: Run, fresh: bool) -> None:
    """Make the run directory agree with the state the run starts from. A fresh run (or one killed
    before its first checkpoint) writes its config; a resumed one drops the metrics and evaluations
    written after its checkpoint, which it will redo. Either removes a killed checkpoint write."""
    out = run.out
    if fresh:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_data(run.config), sort_keys=False))
        atomic_write_text(out / "metrics.jsonl", "")
        (out / "summary.json").unlink(missing_ok=True)
    remove_staging(out / "checkpoints")
    _truncate_metrics(out / "metrics.jsonl", run.epoch)
    if run.summary:
        _write_summary(out, run.summary)


def _truncate_metrics(path: Path, epoch: int) -> None:
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


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # on the disk before the checkpoint that covers it


def _write_summary(out: Path, summary: dict) -> None:
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))


def _trackers(config, out: Path, main: bool, first_epoch: int) -> list:
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


def _log(trackers: list, record: dict, images: torch.Tensor, prompts: list[str], config) -> None:
    """An epoch's numbers to every tracker, and every image_every epochs a grid of its first 16 samples."""
    epoch = record["epoch"]
    scalars = {
        key: value
        for key, value in _flatten(record).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    every = config.logging.image_every
    show = images is not None and every and epoch % every == 0
    if show:
        from torchvision.utils import make_grid

        grid = make_grid(images[:16].cpu(), nrow=4)
    for tracker in trackers:
        tracker.log(scalars, step=epoch)
        if show:
            tracker.log_images({"samples": grid[None]}, step=epoch)
            tracker.log({"samples/prompts": " | ".join(prompts[:16])}, step=epoch)


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat
