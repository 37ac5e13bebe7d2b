"""Attention backend choice, through diffusers' own mechanisms.

`sdpa` is PyTorch's scaled_dot_product_attention (diffusers' default on every device);
`xformers` is memory-efficient attention on CUDA where the `cuda` extra is installed.
"""

from __future__ import annotations

import importlib.util

import torch

BACKENDS = ("auto", "sdpa", "xformers")


def _uses_dispatch(model: torch.nn.Module) -> bool:
    """Models on diffusers' attention dispatcher (SD3, FLUX) rather than per-module processors (UNets)."""
    return any(hasattr(getattr(m, "processor", None), "_attention_backend") for m in model.modules())


def configure_attention(model: torch.nn.Module, backend: str = "auto") -> str:
    """Select the attention implementation of `model`; returns the backend in use."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    on_cuda = next(model.parameters()).device.type == "cuda"
    if backend == "auto":
        has_xformers = importlib.util.find_spec("xformers") is not None
        backend = "xformers" if on_cuda and has_xformers else "sdpa"
    if backend == "xformers":
        if not on_cuda:
            raise ValueError("xformers attention runs on CUDA only; use attention=sdpa on this device")
        if importlib.util.find_spec("xformers") is None:
            raise ImportError("xformers is not installed; pip install 'diffusion-align[cuda]'")
        if _uses_dispatch(model):
            model.set_attention_backend("xformers")
        else:
            model.enable_xformers_memory_efficient_attention()
    return backend
