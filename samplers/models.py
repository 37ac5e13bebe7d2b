"""Resolve a model name into an adapter: `tiny:<family>`, a local directory, or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from samplers.adapters.base import Adapter
from samplers.devices import resolve_device, resolve_dtype

FAMILIES = ("auto", "sd", "sdxl", "sd3", "flux", "sd-turbo", "sdxl-turbo", "wan")


def adapter_class(family: str) -> type[Adapter]:
    from samplers.adapters.flux import FluxAdapter
    from samplers.adapters.sd import SDAdapter
    from samplers.adapters.sd3 import SD3Adapter
    from samplers.adapters.sdxl import SDXLAdapter
    from samplers.adapters.turbo import SDTurboAdapter, SDXLTurboAdapter
    from samplers.adapters.wan import WanAdapter

    classes = {
        "sd": SDAdapter,
        "sdxl": SDXLAdapter,
        "sd3": SD3Adapter,
        "flux": FluxAdapter,
        "sd-turbo": SDTurboAdapter,
        "sdxl-turbo": SDXLTurboAdapter,
        "wan": WanAdapter,
    }
    if family not in classes:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return classes[family]


def detect_family(pipeline) -> str:
    """The adapter family of a loaded pipeline, from its class and scheduler."""
    from diffusers import EulerDiscreteScheduler

    name = type(pipeline).__name__
    scheduler = pipeline.scheduler
    one_step = (
        isinstance(scheduler, EulerDiscreteScheduler) and scheduler.config.timestep_spacing == "trailing"
    )
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("Flux"):
        return "flux"
    if name == "WanPipeline":
        return "wan"
    if name.startswith("StableDiffusionXL"):
        return "sdxl-turbo" if one_step else "sdxl"
    if name.startswith("StableDiffusion"):
        return "sd-turbo" if one_step else "sd"
    raise ValueError(
        f"no adapter for pipeline class {name}; supported families: {', '.join(FAMILIES[1:])} "
        "(set model.family to force one)"
    )


def load_pipeline(name: str, dtype: torch.dtype = torch.float32):
    """(pipeline, adapter keyword defaults) for a tiny name, a registered name, a directory or a hub id."""
    if name.startswith("tiny:"):
        from samplers.tiny import TINY

        kind = name.split(":", 1)[1]
        if kind not in TINY:
            raise ValueError(
                f"unknown tiny model {name!r}; choose one of {', '.join('tiny:' + k for k in TINY)}"
            )
        builder, family, defaults = TINY[kind]
        return builder(), {"family": family, **defaults}
    if name == "toy":
        from samplers.toy import load_toy_pipeline

        return load_toy_pipeline(dtype)
    if name == "toy-video":
        from samplers.toy import load_toy_video_pipeline

        return load_toy_video_pipeline(dtype)
    from diffusers import DiffusionPipeline

    try:
        pipeline = DiffusionPipeline.from_pretrained(name, torch_dtype=dtype)
    except Exception as error:  # the loaders raise many types; all mean "cannot load this"
        local = Path(name).exists()
        hint = (
            "the directory must hold a diffusers pipeline (model_index.json)"
            if local
            else "not a local directory; a hub id needs the network (HF_HUB_OFFLINE is honoured)"
        )
        raise ValueError(f"cannot load model {name!r}: {hint} ({type(error).__name__}: {error})") from error
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None  # rewards judge images here; the checker would blank them
    return pipeline, {}


def load_adapter(
    name: str,
    *,
    family: str = "auto",
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    **kwargs,
) -> Adapter:
    """An adapter around the named model. kwargs: guidance_scale, resolution, attention, ...

    `device` and `dtype` as samplers/devices.py resolves them (`auto` picks for this machine).
    Training run directories and checkpoints are models too: align.runs.load_model reads them.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    pipeline, defaults = load_pipeline(name, dtype)
    detected = defaults.pop("family", None) or detect_family(pipeline)
    chosen = detected if family == "auto" else family
    options = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    return adapter_class(chosen)(pipeline, device=device, dtype=dtype, name=name, **options)
