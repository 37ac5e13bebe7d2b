"""Which device and precision a command runs on: the one place that turns `--device` / `--dtype` into torch.

`auto` device: CUDA, then Apple's MPS, then the CPU. `auto` dtype: bfloat16 on a CUDA GPU that supports
it (float16 on older ones), float32 elsewhere (the CPU, and MPS, where low-precision kernels still vary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEVICES = ("auto", "cuda", "mps", "cpu")  # or cuda:N
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Hardware:
    cuda_devices: int  # CUDA GPUs visible to torch
    mps: bool  # Apple's Metal backend available
    cuda_bf16: bool = False  # the CUDA GPU computes in bfloat16 (Ampere and later)


def hardware() -> Hardware:
    """What this machine offers; the one place that asks torch (tests stand in another machine here)."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bf16 = cuda > 0 and torch.cuda.is_bf16_supported()
    return Hardware(cuda_devices=cuda, mps=torch.backends.mps.is_available(), cuda_bf16=bf16)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N`, `mps` (or a torch.device) -> a device this machine has.

    Raises ValueError naming what is missing, so a command fails in one line before loading a model.
    """
    machine = hardware()
    mps = machine.mps
    if name is None or str(name) == "auto":
        return torch.device("cuda" if machine.cuda_devices else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {str(name)!r}; choose one of {', '.join(DEVICES)} or cuda:N")
    count = machine.cuda_devices if device.type == "cuda" else 0
    if device.type == "cuda" and count == 0:
        raise ValueError(f"device {str(name)!r}: no CUDA GPU is visible here; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise ValueError(f"device {str(name)!r}: only {count} CUDA GPU(s) are visible (cuda:0..{count - 1})")
    if device.type == "mps" and not mps:
        raise ValueError(f"device {str(name)!r}: Apple MPS is not available here; use --device auto or cpu")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` (or None), `float32`, `float16`, `bfloat16` (or a torch.dtype) -> the dtype for `device`."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if hardware().cuda_bf16 else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]
