"""The experiment schema. Experiment files under configs/ are data (YAML) checked against it.

Each field says what it trades off. Algorithm-specific settings live in the algorithm's own
dataclass (registered in ALGORITHM_CONFIGS) and are checked under the `algorithm.` path; a rule that
joins them to other sections is the dataclass's `check_experiment(config)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align.schema import ConfigError, apply_overrides, from_data, param, to_data
from plumbing.registry import Registry

# name -> config dataclass (with a `name` field); align/catalogue.py registers the built-in ones
ALGORITHM_CONFIGS: Registry = Registry("algorithm", catalogue="align.catalogue")


@dataclass
class ModelConfig:
    name: str = "toy"  # `toy`, `tiny:<family>`, a hub id or a local diffusers directory
    family: str = param("auto", choices=("auto", "sd", "sdxl", "sd3", "flux", "sd-turbo", "sdxl-turbo", "wan"))
    dtype: str = param("float32", choices=("float32", "float16", "bfloat16"))  # weights; log-probs stay fp32
    resolution: int | None = param(None, min=8)  # pixels; None = the model's native size (memory ~ res^2)
    frames: int | None = param(None, min=1)  # a video model's frames per clip (Wan: 1 + 4k); None = its own
    guidance_scale: float | None = param(None, min=0.0)  # CFG scale; None = the family default
    attention: str = param("auto", choices=("auto", "sdpa", "xformers"))  # auto = SDPA; xformers if it runs
    gradient_checkpointing: bool = False  # recompute activations in backward: ~30% slower, far less memory
    compile: bool = False  # torch.compile the denoiser while training: a compile per shape, then faster steps


@dataclass
class LoraSettings:
    rank: int = param(8, min=1)  # capacity of the update; memory and step time grow with it
    alpha: float = param(8.0, gt=0)  # scale = alpha / rank
    dropout: float = param(0.0, min=0.0, max=1.0)
    target_modules: list[str] | None = None  # None = the family's attention projections


@dataclass
class SamplingConfig:
    num_steps: int = param(10, min=1)  # denoising steps per rollout: quality vs time per sample
    noise_level: float = param(0.7, min=0.0)  # SDE noise (flow) or DDIM eta (UNet); exploration vs quality
    eval_num_steps: int | None = param(None, min=1)  # None = num_steps
    # the stochastic step of flow models: Flow-GRPO's SDE, or cps (coefficients-preserving: the sample
    # exactly as noisy as the schedule, samplers/flow.py); UNets step by DDIM with eta either way
    sde: str = param("flow-grpo", choices=("flow-grpo", "cps"))
    # how a rollout steps: family, each family's step function; fused, its [T] coefficient tables and
    # one fused step (the same draws; equal for the flow SDE); compiled, that step through
    # torch.compile(fullgraph=True) (samplers/fused.py)
    step_kernel: str = param("family", choices=("family", "fused", "compiled"))
    # step noise: generators, one torch.Generator per sample (diffusers' draws for the same seeds);
    # counter, computed on the device from (seed, draw, element) counters: no host generator, no copy
    noise: str = param("generators", choices=("generators", "counter"))
    # the batch is sampled in this many parts; with rewards.asynchronous, each part is scored while the
    # next one samples (a slow reward, such as a reward server, then overlaps sampling)
    chunks: int = param(1, min=1)


@dataclass
class RewardTerm:
    name: str  # a registered reward (`align rewards list`)
    weight: float = 1.0  # its weight in the combined reward
    args: dict[str, Any] = field(default_factory=dict)  # passed to the reward's factory
    # [start, end] epochs: the weight is 0 before epoch `start` and rises linearly to `weight` at `end`, a
    # curriculum of objectives (the right sum paid first, the bare-answer format asked for later); [] = always
    ramp: list[int] = field(default_factory=list)

    def check(self):
        if self.ramp and (len(self.ramp) != 2 or not 0 <= self.ramp[0] <= self.ramp[1]):
            yield ["ramp"], f"ramp {self.ramp} is not [start, end] epochs with 0 <= start <= end; e.g. [0, 20]"

    def weight_at(self, epoch: int) -> float:
        """The term's weight in epoch `epoch` (0-based), its ramp applied."""
        if not self.ramp or epoch >= self.ramp[1]:
            return self.weight
        start, end = self.ramp
        return 0.0 if epoch < start else self.weight * (epoch - start + 1) / (end - start + 1)


@dataclass
class RewardsConfig:
    terms: list[RewardTerm] = field(default_factory=list)
    normalise: str = param("group", choices=("none", "group", "running"))  # per reward, before summing
    # seconds a term scored on a reward server (args.remote: URL) is retried before the run stops
    remote_timeout: float = param(120.0, gt=0.0)
    # score each sampled part (sampling.chunks) on a worker thread while the next part samples; the
    # values, and so the run, are those of synchronous scoring
    asynchronous: bool = False

    def check(self):
        names = [t.name for t in self.terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            yield ["terms"], f"reward {duplicates[0]!r} is listed twice; give each reward once"


@dataclass
class TrainConfig:
    seed: int = 0
    trainable: str = param("lora", choices=("lora", "full"))  # LoRA: small, fast; full: more capacity, memory
    lr: float = param(3e-4, gt=0.0)
    # per epoch: constant, or cosine from lr down to lr_final_fraction x lr at the last epoch (after
    # warmup_epochs rising linearly): a long RL run stops wandering once the policy is good
    lr_schedule: str = param("constant", choices=("constant", "cosine"))
    lr_final_fraction: float = param(0.0, min=0.0, max=1.0)
    warmup_epochs: int = param(0, min=0)
    weight_decay: float = param(1e-4, min=0.0)
    # adamw: torch's AdamW; adamw8bit: bitsandbytes' 8-bit AdamW (the `cuda` extra; runs on the CPU too),
    # a quarter of the optimiser state's memory for full fine-tuning
    optimizer: str = param("adamw", choices=("adamw", "adamw8bit"))
    batch_size: int = param(16, min=1)  # samples collected per epoch per process
    group_size: int = param(
        4, min=1
    )  # samples per prompt (GRPO groups, DPO pairs); batch_size % group_size == 0
    micro_batch_size: int = param(4, min=1)  # samples per backward pass: memory vs speed
    num_epochs: int = param(10, min=1)  # collect-then-train rounds
    inner_epochs: int = param(1, min=1)  # passes over each collected batch (PPO reuse)
    steps_per_pass: int = param(1, min=1)  # optimiser steps per pass (Flow-GRPO: several; the PPO clip acts)
    max_grad_norm: float | None = param(1.0, gt=0.0)  # None = no clipping
    # optimiser steps skipped in a row (a NaN or inf in a reward, the loss or the gradients) before the run
    # stops: rides out a rare bad batch vs hours spent on a run that has diverged
    max_nonfinite_steps: int = param(5, min=1)
    mixed_precision: str = param("no", choices=("no", "fp16", "bf16"))
    # fsdp2: shard the model's weights, gradients and optimiser state over the launched processes
    # (torch's fully_shard, one unit per repeated block) and checkpoint each process's shards
    # (torch.distributed.checkpoint; a resume reshards to any process count). none: each process holds
    # the whole model (DDP through accelerate). auto: fsdp2 when the launch asks for FSDP
    # (`accelerate launch` with an FSDP config, e.g. configs/accelerate/2cpu-fsdp.yaml), else none
    sharding: str = param("auto", choices=("auto", "none", "fsdp2"))
    # under fsdp2: keep the shards of the weights, gradients and optimiser state in CPU memory (FSDP2's
    # CPUOffloadPolicy: the optimiser steps on the CPU, each block is copied to the GPU to run)
    fsdp_offload: bool = False
    # where the EMA of the trainable weights lives: auto, beside them; cpu, in host memory (copied
    # there once an epoch, a host sync per epoch; swapped onto the device for evaluation)
    ema_device: str = param("auto", choices=("auto", "cpu"))
    ema_decay: float = param(0.0, min=0.0, max=1.0)  # 0 = no EMA of trainable weights
    checkpoint_every: int = param(0, min=0)  # epochs; 0 = only at the end
    keep_checkpoints: int = param(2, min=1)
    eval_every: int = param(0, min=0)  # epochs; 0 = at the start and the end only
    prompts: str = "train"  # a prompt split of the toy world or a text file, one prompt per line
    # a curriculum (competence-based, Platanios et al. 2019): epoch 0 draws its prompts from the easiest
    # curriculum_start of them, a share rising linearly to all of them at curriculum_epochs. Needs prompts
    # with difficulties (a text task that defines one, arithmetic's is the sum; or a .jsonl's `difficulty`).
    # 1.0 = none: an easy start gives a weak policy reward to climb from, at the cost of epochs on easy prompts
    curriculum_start: float = param(1.0, gt=0.0, max=1.0)
    curriculum_epochs: int = param(0, min=0)

    def check(self):
        if self.batch_size % self.group_size:
            yield (
                ["batch_size", "group_size"],
                (
                    f"batch_size {self.batch_size} is not divisible by group_size {self.group_size}; "
                    "make batch_size a multiple of group_size"
                ),
            )
        if self.curriculum_start < 1.0 and not self.curriculum_epochs:
            yield (
                ["curriculum_epochs"],
                "curriculum_start < 1 needs curriculum_epochs > 0: the epoch by which every prompt is drawn",
            )
        if self.batch_size % self.micro_batch_size:
            yield (
                ["micro_batch_size", "batch_size"],
                (
                    f"batch_size {self.batch_size} is not divisible by micro_batch_size {self.micro_batch_size}"
                ),
            )


@dataclass
class EvalConfig:
    prompts: str = "heldout"  # prompt split or file
    seeds: int = param(1, min=1)  # images per prompt (seeds 0..n-1)
    max_prompts: int | None = param(None, min=1)  # cap for quick evaluations
    rewards: list[str] = field(default_factory=list)  # extra rewards to report (not optimised)
    # seeds per prompt of an SDE rollout (sampling.num_steps, noise_level) on which every evaluation also
    # measures the path KL from the base (the LoRA off; align/goodhart.py): the x-axis of Gao et al.'s
    # over-optimisation curves. 0: not measured (it costs three denoiser passes a step)
    kl_seeds: int = param(0, min=0)


@dataclass
class MonitorConfig:
    # flags on the epoch's monitors (align/monitoring.py: saturation, diversity, ..., and NAME/disagreement
    # of a proxy ensemble): [{monitor: NAME, above | below | rise: VALUE}], rise relative to the first epoch
    flags: list[dict] = field(default_factory=list)
    stop: bool = False  # end the run at the first flag: evaluate and checkpoint that epoch (early stopping)

    def check(self):
        from align.monitoring import flag_problems

        yield from flag_problems(self.flags)


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False  # needs the wandb extra; WANDB_MODE=offline runs without an account
    image_every: int = param(1, min=0)  # epochs between image grids in TensorBoard; 0 = never
    progress: bool = True
    # per optimiser step, how much the micro-batch gradients agree (grad_agreement: 0 = pure noise,
    # 1 = all point the same way); costs one copy of the trainable gradients, only in steps of two or
    # more micro-batches (a step of one has nothing to compare)
    gradient_agreement: bool = True


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    algorithm: Any = None  # an ALGORITHM_CONFIGS dataclass
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _algorithm_from_data(data: Any, errors: list[str]):
    if not isinstance(data, dict) or "name" not in data:
        errors.append("algorithm: missing; give `algorithm: {name: ...}`")
        return None
    try:
        cls = ALGORITHM_CONFIGS.lookup(data["name"])
    except ValueError as error:
        errors.append(f"algorithm.name: {error}")
        return None
    try:
        return from_data(cls, data, "algorithm")
    except ConfigError as error:
        errors.extend(error.errors)
        return None


def config_from_data(data: dict) -> ExperimentConfig:
    """Validate plain data into an ExperimentConfig; raises ConfigError listing every problem."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {type(data).__name__}"])
    data = dict(data)
    algorithm_data = data.pop("algorithm", None)
    try:
        config = from_data(ExperimentConfig, data)
    except ConfigError as error:
        errors.extend(error.errors)
        config = None
    algorithm = _algorithm_from_data(algorithm_data, errors)
    if errors:
        raise ConfigError(errors)
    config = dataclasses.replace(config, algorithm=algorithm)
    # rules between the algorithm and the other sections: `check_experiment(config)` on its settings
    check = getattr(algorithm, "check_experiment", None)
    errors = [f"{'.'.join(path)}: {message}" for path, message in (check(config) if check else ())]
    if errors:
        raise ConfigError(errors)
    return config


def read_config_file(path: str | Path) -> dict:
    """A YAML file, or a shipped recipe named under configs/ (`toy/grpo-demo.yaml`) where no such file is."""
    from align.recipes import find_file

    found = find_file(path)
    if found is None:
        raise ConfigError([f"{path}: no such config file (nor a shipped recipe such as toy/grpo-demo.yaml)"])
    path = found
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML ({error})"]) from error
    return data if data is not None else {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file, apply `key.path=value` overrides, validate."""
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of sections, got {type(data).__name__}"])
    return config_from_data(apply_overrides(data, list(overrides or [])))


def config_to_data(config: ExperimentConfig) -> dict:
    return to_data(config)
