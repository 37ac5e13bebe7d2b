"""Tensor memory counted the way an allocator's high-water mark counts it, on any device (the meta
device included): what `align plan` traces its estimates with, and what its calibration measures.

`LiveBytes` is a dispatch mode: every tensor an op creates while it is active, and every tensor given
to `track`, adds its storage's bytes once (views share their storage) until the storage is freed. Its
`peak` is then the most bytes of tensor storage alive at once, as `torch.cuda.max_memory_allocated`
reads it on a GPU (less the allocator's rounding and caching), and on the meta device it is the same
count for tensors that hold no data, so a model that does not fit this machine can be traced here.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive: `current`, and `peak` since the last `reset_peak()`."""

    def __init__(self):
        super().__init__()
        self.sizes: dict[int, int] = {}  # id of a live storage -> its bytes
        self.current = 0
        self.peak = 0

    def track(self, tensors: Iterable[torch.Tensor] | torch.Tensor) -> None:
        """Count tensors made outside the mode (weights, buffers, optimiser state) until they are freed."""
        for tensor in [tensors] if isinstance(tensors, torch.Tensor) else tensors:
            if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
                continue
            storage = tensor.untyped_storage()  # one Python object per storage, kept as long as it lives
            key = id(storage)
            if key in self.sizes:
                continue
            self.sizes[key] = storage.nbytes()
            self.current += self.sizes[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)

    def track_modules(self, modules: Iterable[torch.nn.Module]) -> None:
        for module in modules:
            self.track([*module.parameters(), *module.buffers()])

    def reset_peak(self) -> int:
        self.peak = self.current
        return self.current

    def _free(self, key: int) -> None:
        self.current -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        self.track([t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)])
        return output


def measured_epoch_peak(run, epochs: int = 2) -> dict:
    """Train `run` for `epochs` epochs under a LiveBytes and report, for the last one, the peak bytes
    of tensor storage (weights, optimiser state, trajectories, activations: everything a GPU's
    allocator would hold) and the bytes alive before it. The check `align plan` is calibrated by."""
    import gc

    meter = LiveBytes()
    with meter:
        meter.track_modules(held_modules(run.adapter, run.rewards))
        if run.ema is not None:
            meter.track(run.ema.shadow.values())
        for _ in range(epochs):
            gc.collect()
            before = meter.reset_peak()
            run.train_epoch()
    return {"peak": meter.peak, "before": before}


def held_modules(adapter, rewards=None) -> list[torch.nn.Module]:
    """Every module a run keeps: the pipeline's (denoiser, text encoders, VAE) and the rewards'."""
    pipeline = getattr(adapter, "pipeline", None)
    found = [m for m in (pipeline.components.values() if pipeline is not None else []) if isinstance(m, torch.nn.Module)]
    found = found or [adapter.model]
    for reward in rewards.rewards.values() if rewards is not None else []:
        found += reward_modules(reward)
    return found


def reward_modules(reward) -> list[torch.nn.Module]:
    """The networks a reward holds (itself, where it is a module)."""
    found = [m for m in vars(reward).values() if isinstance(m, torch.nn.Module)]
    return found + ([reward] if isinstance(reward, torch.nn.Module) else [])


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash, memory-efficient) holds, for meta tensors: the output and
    one float32 log-sum-exp per query row; the backward makes the three input gradients."""

    @staticmethod
    def forward(ctx, query, key, value):
        output = query.new_empty(*query.shape[:-1], value.shape[-1])
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, output, logsumexp)
        return output

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@contextlib.contextmanager
def fused_attention_on_meta():
    """Inside, scaled_dot_product_attention on meta tensors counts as the fused kernels a GPU (or this
    CPU) runs, not as the math fallback PyTorch picks for the meta device, which materialises every
    attention matrix and would overstate a trace many times over."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def attention(query, key, value, *args, **kwargs):
        if query.device.type != "meta":
            return original(query, key, value, *args, **kwargs)
        if key.shape[-3] != query.shape[-3]:  # grouped-query attention: the kernel repeats the heads
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        return _FusedAttention.apply(query, key, value)

    functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original
