"""What a training run is built from besides its algorithm: the accelerator, the optimiser, its lr
schedule, the EMA of the weights, and the gradient-agreement meter of a step."""

from __future__ import annotations

import torch


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


FUSED_ADAMW_DEVICES = ("cpu", "cuda")
FUSED_ADAMW_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make_optimizer(name: str, parameters: list[torch.nn.Parameter], lr: float, weight_decay: float):
    """train.optimizer: `adamw` (torch's, fused where it can be), or `adamw8bit` (bitsandbytes'
    block-wise 8-bit AdamW: both moments in one byte an element instead of four, for tensors of 4,096
    elements or more; the rest stay 32-bit)."""
    if name == "adamw":
        return adamw(parameters, lr, weight_decay)
    try:
        import bitsandbytes
    except ImportError:
        raise ValueError(
            "train.optimizer=adamw8bit needs bitsandbytes: pip install 'diffusion-align[cuda]' "
            "(or bitsandbytes), or set train.optimizer=adamw"
        ) from None
    return bitsandbytes.optim.AdamW8bit(parameters, lr=lr, weight_decay=weight_decay)


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

    def __init__(self, parameters: dict[str, torch.nn.Parameter], decay: float, device: str = "auto"):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.decay = decay
        self.device = None if device == "auto" else torch.device(device)  # None: beside each weight
        self.shadow = {n: self._placed(p.detach()).clone() for n, p in parameters.items()}
        self._average = get_ema_multi_avg_fn(decay)

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.device is None else tensor.to(self.device)

    @torch.no_grad()
    def update(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        current = [self._placed(p.detach()) for p in parameters.values()]
        self._average([self.shadow[n] for n in parameters], current, None)

    def load(self, shadow: dict[str, torch.Tensor]) -> None:
        """Take a checkpoint's averages (read onto the CPU), kept where this EMA keeps its own."""
        self.shadow = {k: v.to(self.shadow[k].device, copy=True) for k, v in shadow.items()}


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

    def value(self) -> torch.Tensor | None:
        """The agreement as a 0-d tensor on the gradients' device (read with the epoch's other
        statistics); NaN where every unit's gradient was zero (nothing to agree on); None for one unit."""
        if self.units < 2:
            return None
        squares = torch.as_tensor(self.squares, dtype=torch.float64)
        norms = [torch.linalg.vector_norm(p, dtype=torch.promote_types(p.dtype, torch.float32)) for p in self.previous]
        total = torch.stack([n.double().to(squares.device) ** 2 for n in norms]).sum() if norms else squares * 0
        agreement = (total - squares) / ((self.units - 1) * squares)
        return torch.where(squares > 0, agreement, torch.nan)
