"""Activation memory that frozen weights do not need.

Autograd's convolution keeps its input for the backward pass whether or not its weight is trained,
but the gradient with respect to the input needs only the weight. When LoRA trains the attention
projections, every convolution of the UNet and all of the VAE decoder are frozen, and their inputs
are a fifth of what a UNet call keeps and a third of what the decoder keeps.

`lean_frozen_convs(module)` turns the module's nn.Conv2d layers into LeanConv2d: the same layer,
whose forward with a frozen weight and an input that needs a gradient keeps only the weight. Same
numbers, same parameters and state dict. A trained weight (full fine-tuning) takes the ordinary
path; LoRA on a convolution leaves its base layer frozen, and that layer is lean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose backward returns the input's gradient only, from the weight alone."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        ctx.geometry = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        # under autocast the forward ran in grad's dtype with a cast weight: the backward does too
        grad_input = torch.nn.grad.conv2d_input(
            ctx.input_shape, weight.to(grad.dtype), grad, stride, padding, dilation, groups
        )
        return grad_input.to(ctx.input_dtype), None, None, None, None, None, None


class LeanConv2d(torch.nn.Conv2d):
    """nn.Conv2d that keeps no input for backward while its weight (and bias) are frozen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
        plain = self.padding_mode != "zeros" or isinstance(self.padding, str)
        if frozen and not plain and x.requires_grad and torch.is_grad_enabled():
            return _FrozenConv2d.apply(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        return super().forward(x)


def lean_frozen_convs(module: torch.nn.Module | None) -> int:
    """Make every plain nn.Conv2d inside `module` a LeanConv2d, in place; returns how many."""
    if module is None:
        return 0
    count = 0
    for layer in module.modules():
        if type(layer) is torch.nn.Conv2d:
            layer.__class__ = LeanConv2d
            count += 1
    return count
