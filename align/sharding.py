"""FSDP2 (`torch.distributed.fsdp.fully_shard`) across the launched processes, and the checkpoints that
go with it.

`train.sharding: fsdp2` shards the denoiser's parameters, gradients and optimiser state over every
process of the launch (`accelerate launch --config_file configs/accelerate/2cpu-fsdp.yaml ...`, or
torchrun): each repeated block (the elements of the outermost `nn.ModuleList`s: transformer blocks,
UNet down/up blocks) is one unit, gathered only while it runs, then the root holds what is left. The
same code runs on CPU processes over gloo and on GPUs over NCCL.

Checkpoints of such a run are written by `torch.distributed.checkpoint`: every process writes its own
shards of the trainable weights, the optimiser state and the EMA into `sharded/`, and a load reshards
them to whatever number of processes resumes (one included). The weights are also exported whole, in
the format their pipelines load (a diffusers LoRA, or the full model), as an unsharded run's are.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

SHARDED_DIR = "sharded"


def resolve_sharding(setting: str) -> str:
    """train.sharding as run: `auto` is fsdp2 under a launch configured for FSDP (accelerate's launcher
    sets ACCELERATE_USE_FSDP), none otherwise."""
    import os

    if setting != "auto":
        return setting
    return "fsdp2" if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" else "none"


def place_for_training(config, modality, accelerator, model, policy, precision: str):
    """(train.sharding as run, whether the model is sharded, the network the loop calls, the
    optimiser): the model sharded before its optimiser is made (it steps the shards) and left
    unwrapped (the shards reduce their own gradients), or handed to accelerate (DDP)."""
    from align.optimisation import make_optimizer

    sharding = resolve_sharding(config.train.sharding)
    if sharding != "none" and not modality.shardable:
        raise ValueError(
            f"train.sharding={sharding} is for image models; {config.algorithm.name} replicates "
            "its model on every process: set train.sharding=none, and launch without FSDP"
        )
    sharded = sharding == "fsdp2" and accelerator.num_processes > 1
    if sharded and config.train.optimizer != "adamw":
        raise ValueError(
            f"train.optimizer={config.train.optimizer} does not step sharded weights; under FSDP2 "
            "use train.optimizer=adamw (with train.fsdp_offload=true to move its state to the CPU)"
        )
    if sharded:
        shard(model, accelerator.device, precision, offload=config.train.fsdp_offload)
    parameters = list(policy.parameters())
    optimizer = make_optimizer(config.train.optimizer, parameters, config.train.lr, config.train.weight_decay)
    if sharded:
        return sharding, sharded, model, optimizer
    return (sharding, sharded, *accelerator.prepare(model, optimizer))


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def wrap_units(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks, each one FSDP unit: the elements with parameters of every `nn.ModuleList`
    not inside another one (SD3's and FLUX's transformer blocks; a UNet's down and up blocks and its
    middle block's attention and resnet blocks)."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                units.extend(m for m in child if next(m.parameters(), None) is not None)
            else:
                visit(child)

    visit(model)
    return units


def shard(
    model: nn.Module, device: torch.device, mixed_precision: str = "no", offload: bool = False
) -> nn.Module:
    """Shard `model` in place over every process of the default process group (FSDP2). Under bf16 or
    fp16 the gathered weights are cast for the forward and the gradients reduced in float32 (FSDP2's
    mixed precision, as accelerate's autocast is not applied to a module it did not wrap). `offload`
    keeps the shards, their gradients and so the optimiser state in CPU memory."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if not distributed():
        raise RuntimeError("train.sharding=fsdp2 shards over launched processes; none were launched")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    place = CPUOffloadPolicy(pin_memory=device.type == "cuda") if offload else OffloadPolicy()
    for unit in wrap_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy, offload_policy=place)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=place)
    return model


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a shard (a collective: every process calls it, in the same order), or the
    tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor, or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_tree(value):
    """`value` (dicts, lists, tensors) with every sharded tensor replaced by this process's shard."""
    if isinstance(value, dict):
        return {k: local_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [local_tree(v) for v in value]
    return local(value) if isinstance(value, torch.Tensor) else value


def reshard(model: nn.Module) -> None:
    """Put every FSDP unit back to its shards. The root stays gathered after a forward without a
    backward (an evaluation): its module would list whole tensors whose storage a later reshard frees,
    not the shards the optimiser steps."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def sharded_state(model: nn.Module, optimizer, policy, ema) -> dict:
    """What `torch.distributed.checkpoint` saves and loads in place: the trainable weights (by name),
    the optimiser state (by parameter name: the same keys at any world size; a fresh optimiser's
    state is created empty first, so a load has tensors to fill) and the EMA."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(model)
    return {
        "trainable": {n: p.detach() for n, p in policy.named_parameters().items()},
        "optimizer": get_optimizer_state_dict(model, optimizer),
        "ema": dict(ema.shadow) if ema is not None else {},
    }


def dcp_save(state: dict, directory) -> None:
    """torch.distributed.checkpoint's save by every process, or by the only one (no process group)."""
    import torch.distributed.checkpoint as dcp

    with _single_process_quiet():
        dcp.save(state, checkpoint_id=directory, no_dist=not distributed())


def dcp_load(state: dict, directory) -> None:
    """Load in place into `state`'s tensors, resharded to this run's processes (one included)."""
    import torch.distributed.checkpoint as dcp

    with _single_process_quiet():
        dcp.load(state, checkpoint_id=directory, no_dist=not distributed())


@contextlib.contextmanager
def _single_process_quiet():
    """Without a process group torch warns that it assumes one process: here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def load_optimizer(model: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state)
