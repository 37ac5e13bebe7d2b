"""What training changes in an image model: LoRA (through peft) or the full denoiser.

The reference policy of KL terms and DPO is the same network with the LoRA disabled, never a
second copy. LoRA weights are saved in the format `pipeline.load_lora_weights()` reads.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from align.config import LoraSettings

# attention projections of each family's denoiser (Flow-GRPO's choice for SD3; DDPO's for UNets)
DEFAULT_TARGETS = {
    "flow": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"],
    "unet": ["to_q", "to_k", "to_v", "to_out.0"],
}


def lora_targets(model: torch.nn.Module, suffixes: list[str]) -> list[str]:
    """Full names of the modules matching `suffixes`, leaving out projections whose output the
    network discards (SD3's last block computes text queries it never uses: a LoRA there would be
    trained by nothing)."""
    modules = [name for name, _ in model.named_modules()]
    dead = {
        f"{name}.add_q_proj"
        for name, module in model.named_modules()
        if getattr(module, "context_pre_only", False) and hasattr(module, "add_q_proj")
    }

    def matches(name: str, suffix: str) -> bool:
        return name == suffix or name.endswith("." + suffix)

    missing = [s for s in suffixes if not any(matches(n, s) for n in modules)]
    if missing:
        raise ValueError(f"lora.target_modules {missing} are not modules of {type(model).__name__}")
    return [n for n in modules if any(matches(n, s) for s in suffixes) and n not in dead]


class ImagePolicy:
    """The trainable view of an adapter: its denoiser with a LoRA (or fully trainable)."""

    def __init__(self, adapter, trainable: str = "lora", lora: LoraSettings | None = None):
        self.adapter = adapter
        self.trainable = trainable
        self.model = adapter.model
        if trainable == "lora":
            from peft import LoraConfig

            lora = lora or LoraSettings()
            defaults = getattr(adapter, "lora_targets", None) or DEFAULT_TARGETS[adapter.family]
            targets = lora_targets(self.model, lora.target_modules or defaults)
            config = LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=targets,
                init_lora_weights="gaussian",
            )
            self.model.add_adapter(config)
        elif trainable == "full":
            self.model.requires_grad_(True)
        else:
            raise ValueError(f"unknown trainable {trainable!r}; use 'lora' or 'full'")

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference policy: the LoRA switched off (full fine-tuning has none)."""
        if self.trainable != "lora":
            raise ValueError("a reference policy needs train.trainable=lora (the base is the LoRA disabled)")
        self.model.disable_adapters()
        try:
            yield
        finally:
            self.model.enable_adapters()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self.named_parameters()
        missing = sorted(set(params) - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

    @contextlib.contextmanager
    def swapped(self, state: dict[str, torch.Tensor]):
        """Inside the block the trainable tensors hold `state` (another policy of the same shape, such
        as DiffusionNFT's old policy); the current ones come back after it, gradients untouched."""
        current = self.trainable_state()
        self.load_trainable_state(state)
        try:
            yield
        finally:
            self.load_trainable_state(current)

    def save_weights(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """LoRA in diffusers' format (`lora/`), or the full denoiser (`model/`); `state` gives the
        tensors (the model's own state-dict names) where the model's own are shards."""
        if self.trainable == "lora":
            from peft.utils import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.model, state_dict=state)
            if self.adapter.family == "unet":
                from diffusers.utils import convert_state_dict_to_diffusers

                state = convert_state_dict_to_diffusers(state)
            key = "unet_lora_layers" if self.adapter.family == "unet" else "transformer_lora_layers"
            type(self.adapter.pipeline).save_lora_weights(str(directory / "lora"), **{key: state})
        elif state is None:
            self.model.save_pretrained(str(directory / "model"))
        else:  # what save_pretrained writes, from the gathered tensors (one file, however large)
            from safetensors.torch import save_file

            self.model.save_config(str(directory / "model"))
            tensors = {k: v.contiguous() for k, v in state.items()}
            save_file(
                tensors, str(directory / "model" / "diffusion_pytorch_model.safetensors"), {"format": "pt"}
            )
