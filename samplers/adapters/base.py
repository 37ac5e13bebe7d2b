"""What every model adapter offers: a diffusers pipeline seen through the shared vocabulary.

An adapter turns a pipeline into (encode, denoiser, schedule, step_fn, decode). The pipeline stays
the owner of the weights; the adapter never relies on scheduler state: it asks the scheduler for its
timestep / sigma tables and does the stepping itself with a pure step function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from samplers.attention import configure_attention
from samplers.lean import lean_frozen_convs
from samplers.noise import CounterNoise, Generators, draw_noise, generators_from_seeds
from samplers.rollout import rescore, rollout
from samplers.types import Cond, Schedule, StepOut, Trajectory


class Adapter:
    """Base class; one subclass per model family (one file each)."""

    family: ClassVar[str]  # "unet" (DDIM / DDPM steps) or "flow" (Euler / SDE steps)
    default_steps: ClassVar[int] = 20
    default_guidance: ClassVar[float] = 5.0
    step_kernel: str = "family"  # how rollouts step (samplers/fused.py): family, fused or compiled
    noise: str = "generators"  # step noise: generators (one torch.Generator per sample) or counter

    def __init__(
        self,
        pipeline,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        guidance_scale: float | None = None,
        resolution: int | None = None,
        attention: str = "auto",
        gradient_checkpointing: bool = False,
        default_steps: int | None = None,
        name: str = "",
    ):
        self.pipeline = pipeline.to(device=device)
        modules = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)]
        if any(p.dtype != dtype for m in modules for p in m.parameters()):
            self.pipeline = pipeline.to(dtype=dtype)
        self.pipeline.set_progress_bar_config(disable=True)
        self.device = torch.device(device)
        self.dtype = dtype
        self.name = name
        self.guidance_scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        self.default_steps = default_steps or type(self).default_steps
        self.resolution = resolution or self.default_resolution()
        self._cache: dict[str, Cond] = {}
        for module in [self.model, *self.frozen_modules()]:
            module.requires_grad_(False)
            lean_frozen_convs(module)  # frozen convs keep no input for backward
        self.attention = configure_attention(self.model, attention)
        if gradient_checkpointing:
            self.model.enable_gradient_checkpointing()

    def checkpoint_blocks(self, denoiser: bool = True, decoder: bool = False) -> None:
        """Activation checkpointing inside the denoiser (each transformer / resnet block) and the VAE
        decoder, for every forward with gradients, where the diffusers model supports it."""
        vae = getattr(getattr(self, "pipeline", None), "vae", None)
        for module, wanted in ((self.model, denoiser), (vae, decoder)):
            if wanted and getattr(module, "_supports_gradient_checkpointing", False):
                module.enable_gradient_checkpointing()

    @property
    def network(self) -> torch.nn.Module:
        """What forward passes go through: the model, or its distributed wrapper while training."""
        network = getattr(self, "_network", None)  # not `or`: a compiled module refuses bool()
        return self.model if network is None else network

    @network.setter
    def network(self, module: torch.nn.Module | None) -> None:
        self._network = module

    @contextlib.contextmanager
    def eager(self):
        """Forward passes through the model itself, not its compiled or distributed wrapper (a
        one-off measurement should not compile a graph of its own shape)."""
        network, self._network = getattr(self, "_network", None), None
        try:
            yield
        finally:
            self._network = network

    # --- what a family provides -------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """The denoiser network (UNet or transformer): what LoRA and fine-tuning train."""
        raise NotImplementedError

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Text encoders and VAE: never trained here."""
        raise NotImplementedError

    def default_resolution(self) -> int:
        raise NotImplementedError

    def encode_batch(self, prompts: list[str]) -> Cond:
        """Conditioning for `prompts` (positive and, where guidance needs it, negative)."""
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Model output for latents x [B, ...] at per-sample timesteps t [B], guidance applied."""
        raise NotImplementedError

    def schedule(self, num_steps: int) -> Schedule:
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latent in the layout the denoiser takes."""
        raise NotImplementedError

    def step(self, model_output, x, sigma, sigma_next, **kwargs) -> StepOut:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, ...] -> images [B, 3, H, W] float32 in [0, 1] (differentiable)."""
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The forward process: a clean latent x0 [B, ...] noised to per-sample sigma [B]."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> latents in the layout the denoiser takes (VAE mean)."""
        raise NotImplementedError

    def training_times(
        self, batch: int, generator: torch.Generator | None = None, within: tuple[float, float] = (0.0, 1.0)
    ):
        """(model timesteps t [B], sigmas [B]) drawn as the family is trained, restricted to the part
        `within` = (lo, hi) of the training noise schedule (0: clean, 1: pure noise; (0, 1): all of it)."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What the denoiser regresses at (x0, noise, sigma): velocity, epsilon or v."""
        raise NotImplementedError

    @contextlib.contextmanager
    def conditional(self):
        """Denoise without classifier-free guidance (training losses use the conditional model)."""
        saved = self.guidance_scale
        self.guidance_scale = 1.0
        try:
            yield
        finally:
            self.guidance_scale = saved

    @contextlib.contextmanager
    def detached_unconditional(self):
        """Guided denoising whose gradient flows through the conditional branch only (the unconditional
        prediction is a constant of the update, as the Flow-GRPO reference trains with CFG)."""
        saved = getattr(self, "_detach_unconditional", False)
        self._detach_unconditional = True
        try:
            yield
        finally:
            self._detach_unconditional = saved

    def guide(self, unconditional: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance: uncond + scale * (cond - uncond)."""
        if getattr(self, "_detach_unconditional", False):
            unconditional = unconditional.detach()
        return unconditional + self.guidance_scale * (conditional - unconditional)

    def pipeline_images(
        self, prompts: list[str], generators: list[torch.Generator], num_steps: int, cond: Cond | None = None
    ):
        """The plain diffusers pipeline call for the same prompts, seeds, steps and guidance; with `cond`
        (this adapter's `encode(prompts)`, whose keys are the pipeline's own embedding arguments) the
        pipeline is handed the encodings instead of encoding the prompts itself, as a rollout is."""
        raise NotImplementedError

    @torch.no_grad()
    def _pipeline_call(self, prompts, generators, num_steps: int, cond: Cond | None = None, **extra):
        """The pipeline's output for `pipeline_images`: the prompts (or their encodings, `cond`), the
        seeds' generators, the steps, this adapter's guidance and resolution, tensors out; `extra` adds
        the family's own arguments."""
        text = {"prompt": list(prompts)} if cond is None else dict(cond)
        return self.pipeline(
            **text,
            generator=generators,
            num_inference_steps=num_steps,
            guidance_scale=self.guidance_scale,
            height=self.resolution,
            width=self.resolution,
            output_type="pt",
            **extra,
        )

    # --- shared behaviour --------------------------------------------------------------------

    def noise_scale(self, num_steps: int) -> float:
        """Standard deviation of x_T in the adapter's coordinates."""
        return 1.0

    def initial_noise(
        self, generators: Generators, batch: int | None = None, num_steps: int | None = None
    ) -> torch.Tensor:
        """x_T [B, ...] float32, drawn in the model dtype as the pipeline draws it."""
        if batch is None:
            batch = len(generators)
        shape = (batch, *self.latent_shape())
        noise = draw_noise(shape, generators, self.device, self.dtype).float()
        return noise * self.noise_scale(num_steps or self.default_steps)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Cond:
        """Conditioning for a batch of prompts, each prompt encoded once and cached."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            encoded = self.encode_batch(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = {k: v[i : i + 1] for k, v in encoded.items()}
        rows = [self._cache[p] for p in prompts]
        return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}

    def clear_cache(self) -> None:
        self._cache.clear()

    def sample(
        self,
        prompts: Sequence[str],
        generators: list[torch.Generator],
        *,
        num_steps: int | None = None,
        noise_levels: Any = 0.0,
        grad_steps: int = 0,
        checkpoint: bool = False,
        noise: torch.Tensor | None = None,
        graph: bool = False,
    ) -> Trajectory:
        """Roll out a batch: one generator per prompt; x_T from `noise` if given, else drawn."""
        prompts = list(prompts)
        num_steps = num_steps or self.default_steps
        if self.noise == "counter" and isinstance(generators, list):
            generators = CounterNoise.from_generators(generators, self.device)
        if noise is None:
            noise = self.initial_noise(generators, len(prompts), num_steps)
        return rollout(
            self.denoise,
            self.step,
            self.schedule(num_steps),
            noise,
            self.encode(prompts),
            prompts=prompts,
            noise_levels=noise_levels,
            generators=generators,
            grad_steps=grad_steps,
            checkpoint=checkpoint,
            graph=graph,
            kernel=self.step_kernel,
        )

    def rescore(self, trajectory: Trajectory, step: int | torch.Tensor) -> StepOut:
        return rescore(self.denoise, self.step, trajectory, step)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        num_steps: int | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] by the deterministic (ODE) sampler, one seed per prompt."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            generators = generators_from_seeds(list(seeds[start : start + batch_size]))
            trajectory = self.sample(chunk, generators, num_steps=num_steps)
            images.append(self.decode(trajectory.final))
        return torch.cat(images)

    def postprocess(self, decoded: torch.Tensor) -> torch.Tensor:
        """VAE output in [-1, 1] -> images in [0, 1], as diffusers' VaeImageProcessor does."""
        return (decoded.float() / 2 + 0.5).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "adapter": type(self).__name__,
            "resolution": self.resolution,
            "guidance_scale": self.guidance_scale,
            "default_steps": self.default_steps,
            "dtype": str(self.dtype).replace("torch.", ""),
            "attention": self.attention,
        }
