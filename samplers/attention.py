"""Attention backend choice, through diffusers' own mechanisms.

`sdpa` is PyTorch's scaled_dot_product_attention, diffusers' default on every device, and what `auto`
means. `xformers` is used only when asked for, and only after a real call on the model's device and
dtype succeeds: an xformers whose extensions were built for another torch imports fine and fails on its
first use. Where it cannot run, one warning names the cause and the model keeps SDPA.
"""

from __future__ import annotations

import warnings

import torch

BACKENDS = ("auto", "sdpa", "xformers")


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "processor", None) is not None]


def _uses_dispatch(model: torch.nn.Module) -> bool:
    """Models on diffusers' attention dispatcher (FLUX) rather than per-module processors (UNets, SD3)."""
    return any(hasattr(m.processor, "_attention_backend") for m in _attention_modules(model))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def xformers_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why xformers attention cannot run on `device` in `dtype`, or None when a probe call succeeds."""
    # Not installed, built for another torch, no kernel for this device or dtype: each means no.
    try:
        import xformers.ops

        q = torch.randn(1, 16, 2, 32, device=device, dtype=dtype)  # [batch, tokens, heads, head_dim]
        out = xformers.ops.memory_efficient_attention(q, q, q)
        heads_first = q.transpose(1, 2)
        reference = torch.nn.functional.scaled_dot_product_attention(heads_first, heads_first, heads_first)
    except Exception as error:
        return _first_line(error)
    if not torch.allclose(out.float(), reference.transpose(1, 2).float(), atol=2e-2):
        return "its output differs from PyTorch SDPA"
    return None


def switch_to_xformers(model: torch.nn.Module) -> None:
    """Ask diffusers to run `model`'s attention through xformers; raises where diffusers refuses."""
    if _uses_dispatch(model):
        model.set_attention_backend("xformers")
    else:
        model.enable_xformers_memory_efficient_attention()


def configure_attention(model: torch.nn.Module, backend: str = "auto") -> str:
    """Select the attention implementation of `model`; returns the backend in use ("sdpa" or "xformers")."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "xformers":
        return "sdpa"
    weight = next(model.parameters())
    problem = xformers_problem(weight.device, weight.dtype)
    if problem is None:
        saved = [
            (m, m.processor, getattr(m.processor, "_attention_backend", None))
            for m in _attention_modules(model)
        ]
        try:
            switch_to_xformers(model)
            return "xformers"
        except Exception as error:  # diffusers' own checks (version, CUDA) say no: undo any partial switch
            problem = _first_line(error)
            for module, processor, dispatch_backend in saved:
                module.processor = processor
                if hasattr(processor, "_attention_backend"):
                    processor._attention_backend = dispatch_backend
    where = f"{weight.device.type} in {str(weight.dtype).replace('torch.', '')}"
    warnings.warn(f"xformers attention cannot run on {where} ({problem}); using PyTorch SDPA", stacklevel=2)
    return "sdpa"
