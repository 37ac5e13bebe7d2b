"""Frozen convolutions keep no input for backward (samplers/lean.py), with the same numbers."""

import copy

import pytest
import torch
from conftest import tiny_adapter

from samplers.lean import LeanConv2d, lean_frozen_convs


def saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """(fn's output, bytes of the tensors autograd kept for its backward)."""
    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(kept)


@pytest.mark.parametrize(
    "geometry",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1},  # the input size is not implied by the output's
        {"kernel_size": 1},
        {"kernel_size": 3, "padding": 2, "dilation": 2, "groups": 2},
        {"kernel_size": (3, 1), "padding": (1, 0), "bias": False},
    ],
)
def test_a_frozen_conv_keeps_only_its_weight_and_gives_the_same_gradient(geometry):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(4, 6, **geometry).requires_grad_(False)
    lean = copy.deepcopy(plain)
    assert lean_frozen_convs(lean) == 1 and type(lean) is LeanConv2d
    x = torch.randn(2, 4, 9, 9)
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    out_plain, kept_plain = saved_bytes(lambda: plain(inputs[0] * 1.0))
    out_lean, kept_lean = saved_bytes(lambda: lean(inputs[1] * 1.0))
    assert torch.equal(out_plain, out_lean)
    weight = plain.weight.numel() * 4
    assert kept_plain == weight + inputs[0].numel() * 4 and kept_lean == weight
    grad = torch.randn_like(out_plain)
    out_plain.backward(grad)
    out_lean.backward(grad)
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, rtol=1e-6, atol=1e-6)


def test_a_trained_weight_and_string_padding_take_the_ordinary_path():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    lean_frozen_convs(conv)
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    _, kept = saved_bytes(lambda: conv(x))
    assert kept == (conv.weight.numel() + x.numel()) * 4  # the weight's gradient needs the input
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    same = torch.nn.Conv2d(3, 3, 3, padding="same").requires_grad_(False)
    lean_frozen_convs(same)
    _, kept = saved_bytes(lambda: same(x))
    assert kept == (same.weight.numel() + x.numel()) * 4
    with torch.no_grad():  # nothing to keep, nothing changes
        assert not same(x).requires_grad


def test_the_adapters_make_the_unet_and_vae_lean_with_the_same_lora_gradient():
    adapter = tiny_adapter("tiny:sd15")
    convs = [m for m in adapter.model.modules() if isinstance(m, torch.nn.Conv2d)]
    convs += [m for m in adapter.pipeline.vae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is LeanConv2d for m in convs)
    plain = copy.deepcopy(adapter.model)
    for layer in plain.modules():
        if type(layer) is LeanConv2d:
            layer.__class__ = torch.nn.Conv2d
    lean = copy.deepcopy(adapter.model)
    grads = []
    torch.manual_seed(0)
    x = torch.randn(2, *adapter.latent_shape())
    t = torch.tensor([500, 300])
    cond = torch.randn(2, 8, adapter.model.config.cross_attention_dim)
    kept = []
    for model in (plain, lean):
        trained = [p for n, p in model.named_parameters() if "attn2.to_q" in n]  # a LoRA-like target
        for p in trained:
            p.requires_grad_(True)
        out, size = saved_bytes(lambda model=model: model(x, t, cond).sample)
        out.square().mean().backward()
        grads.append([p.grad for p in trained])
        kept.append(size)
    for one, two in zip(*grads, strict=True):
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-7)
    assert kept[1] < 0.9 * kept[0]
