"""Triton kernels for the token log-prob of align/text/logprob.py: no [N, V] buffer at all.

Forward: each program takes BLOCK_N rows and streams the vocabulary in BLOCK_V tiles, keeping a
running max and sum (the online softmax of Milakov & Gimelshein 2018) and picking up the target
logit when its tile passes. It stores the log-prob and the logsumexp of every row.
Backward: recompute each logits tile, form G = g (onehot - softmax) / temperature, and accumulate
    grad_hidden = G W            (one program per row block, owning its rows)
    grad_weight = G^T hidden     (one program per vocabulary tile, owning its rows of W)
so no atomics are needed. The chunked PyTorch version is the reference (tested under
TRITON_INTERPRET=1 against it and the naive computation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = tl.constexpr(16)  # rows per program
BLOCK_V = tl.constexpr(64)  # vocabulary tile
BLOCK_H = tl.constexpr(32)  # hidden tile


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    vocab,
    N,
    V,
    H,
    inv_temp,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    """(h[rows] W[vocab]^T + b[vocab]) * inv_temp as fp32 [BLOCK_N, BLOCK_V]; -inf outside V."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for start in range(0, H, BLOCK_H):
        cols = start + tl.arange(0, BLOCK_H)
        h = tl.load(
            h_ptr + rows[:, None] * H + cols[None, :],
            mask=(rows[:, None] < N) & (cols[None, :] < H),
            other=0.0,
        )
        w = tl.load(
            w_ptr + vocab[:, None] * H + cols[None, :],
            mask=(vocab[:, None] < V) & (cols[None, :] < H),
            other=0.0,
        )
        if IEEE:
            acc += tl.dot(h, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(h, tl.trans(w))
    if HAS_BIAS:
        acc += tl.load(b_ptr + vocab, mask=vocab < V, other=0.0).to(tl.float32)[None, :]
    acc = acc * inv_temp
    return tl.where(vocab[None, :] < V, acc, float("-inf"))


@triton.jit
def _forward_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    out_ptr,
    lse_ptr,
    N,
    V,
    H,
    inv_temp,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    targets = tl.load(t_ptr + rows, mask=rows < N, other=0)
    running_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        vocab = start + tl.arange(0, BLOCK_V)
        logits = _logits_tile(h_ptr, w_ptr, b_ptr, rows, vocab, N, V, H, inv_temp, HAS_BIAS, IEEE)
        new_max = tl.maximum(running_max, tl.max(logits, 1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(logits - new_max[:, None]), 1
        )
        running_max = new_max
        target_logit += tl.sum(tl.where(vocab[None, :] == targets[:, None], logits, 0.0), 1)
    lse = running_max + tl.log(running_sum)
    tl.store(out_ptr + rows, target_logit - lse, mask=rows < N)
    tl.store(lse_ptr + rows, lse, mask=rows < N)


@triton.jit
def _grad_logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    g_ptr,
    lse_ptr,
    rows,
    vocab,
    N,
    V,
    H,
    inv_temp,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    """g (onehot(target) - softmax) * inv_temp for one [BLOCK_N, BLOCK_V] tile (0 outside N, V)."""
    logits = _logits_tile(h_ptr, w_ptr, b_ptr, rows, vocab, N, V, H, inv_temp, HAS_BIAS, IEEE)
    lse = tl.load(lse_ptr + rows, mask=rows < N, other=0.0)
    grad = tl.load(g_ptr + rows, mask=rows < N, other=0.0)
    targets = tl.load(t_ptr + rows, mask=rows < N, other=-1)
    onehot = tl.where(vocab[None, :] == targets[:, None], 1.0, 0.0)
    tile = (onehot - tl.exp(logits - lse[:, None])) * (grad * inv_temp)[:, None]
    return tl.where((rows[:, None] < N) & (vocab[None, :] < V), tile, 0.0)


@triton.jit
def _grad_hidden_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    g_ptr,
    lse_ptr,
    gh_ptr,
    N,
    V,
    H,
    inv_temp,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    """grad_hidden [N, H] fp32, zero-initialised; this program owns rows of its block."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    for start in range(0, V, BLOCK_V):
        vocab = start + tl.arange(0, BLOCK_V)
        tile = _grad_logits_tile(
            h_ptr,
            w_ptr,
            b_ptr,
            t_ptr,
            g_ptr,
            lse_ptr,
            rows,
            vocab,
            N,
            V,
            H,
            inv_temp,
            HAS_BIAS,
            IEEE,
        )
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            w = tl.load(
                w_ptr + vocab[:, None] * H + cols[None, :],
                mask=(vocab[:, None] < V) & (cols[None, :] < H),
                other=0.0,
            )
            where = gh_ptr + rows[:, None] * H + cols[None, :]
            inside = (rows[:, None] < N) & (cols[None, :] < H)
            if IEEE:
                update = tl.dot(tile, w.to(tl.float32), input_precision="ieee")
            else:
                update = tl.dot(tile.to(w.dtype), w)
            tl.store(where, tl.load(where, mask=inside, other=0.0) + update, mask=inside)


@triton.jit
def _grad_weight_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    g_ptr,
    lse_ptr,
    gw_ptr,
    gb_ptr,
    N,
    V,
    H,
    inv_temp,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
):
    """grad_weight [V, H] and grad_bias [V] fp32, zero-initialised; this program owns its vocab tile."""
    vocab = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    bias_grad = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        tile = _grad_logits_tile(
            h_ptr,
            w_ptr,
            b_ptr,
            t_ptr,
            g_ptr,
            lse_ptr,
            rows,
            vocab,
            N,
            V,
            H,
            inv_temp,
            HAS_BIAS,
            IEEE,
        )
        bias_grad += tl.sum(tile, 0)
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            h = tl.load(
                h_ptr + rows[:, None] * H + cols[None, :],
                mask=(rows[:, None] < N) & (cols[None, :] < H),
                other=0.0,
            )
            where = gw_ptr + vocab[:, None] * H + cols[None, :]
            inside = (vocab[:, None] < V) & (cols[None, :] < H)
            if IEEE:
                update = tl.dot(tl.trans(tile), h.to(tl.float32), input_precision="ieee")
            else:
                update = tl.dot(tl.trans(tile.to(h.dtype)), h)
            tl.store(where, tl.load(where, mask=inside, other=0.0) + update, mask=inside)
    if HAS_BIAS:
        tl.store(gb_ptr + vocab, bias_grad, mask=vocab < V)


def _launch_arguments(hidden, weight, bias, temperature):
    n, h = hidden.shape
    v = weight.shape[0]
    ieee = hidden.dtype == torch.float32  # fp32 in, fp32 products (no TF32) to match the reference
    bias_arg = bias if bias is not None else weight  # never read when HAS_BIAS is False
    constants = {"HAS_BIAS": bias is not None, "IEEE": ieee}
    return n, v, h, bias_arg, 1.0 / temperature, constants


class _TritonTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float):
        hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
        n, v, h, bias_arg, inv_temp, constants = _launch_arguments(hidden, weight, bias, temperature)
        log_probs = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grid = (triton.cdiv(n, BLOCK_N.value),)
        _forward_kernel[grid](
            hidden, weight, bias_arg, targets, log_probs, lse, n, v, h, inv_temp, **constants
        )
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature = temperature
        return log_probs

    @staticmethod
    def backward(ctx, grad_log_probs):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        n, v, h, bias_arg, inv_temp, constants = _launch_arguments(hidden, weight, bias, ctx.temperature)
        grad = grad_log_probs.float().contiguous()
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.zeros(n, h, dtype=torch.float32, device=hidden.device)
            _grad_hidden_kernel[(triton.cdiv(n, BLOCK_N.value),)](
                hidden, weight, bias_arg, targets, grad, lse, grad_hidden, n, v, h, inv_temp, **constants
            )
            grad_hidden = grad_hidden.to(hidden.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_weight = torch.zeros(v, h, dtype=torch.float32, device=hidden.device)
            bias_buffer = torch.zeros(v, dtype=torch.float32, device=hidden.device)
            _grad_weight_kernel[(triton.cdiv(v, BLOCK_V.value),)](
                hidden,
                weight,
                bias_arg,
                targets,
                grad,
                lse,
                grad_weight,
                bias_buffer,
                n,
                v,
                h,
                inv_temp,
                **constants,
            )
            grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
            grad_bias = bias_buffer.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None


def triton_token_log_probs(hidden, weight, targets, bias=None, temperature: float = 1.0) -> torch.Tensor:
    """hidden [N, H], weight [V, H], targets [N] -> log-probs [N] fp32 (see align/text/logprob.py)."""
    return _TritonTokenLogProbs.apply(hidden, weight, bias, targets, temperature)
