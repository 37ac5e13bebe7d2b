"""Per-token log-probs of chosen tokens from hidden states and the output projection.

    log p(t_n | h_n) = z_n[t_n] - logsumexp_v z_n[v],   z_n = (h_n W^T + b) / temperature

computed `chunk_size` rows at a time so the [N, V] logits never exist at once, in the forward
pass and in the backward pass (which recomputes each chunk's logits from the saved hidden states
and the per-row logsumexp). The idea of chunking the output projection with its loss is Liger-Kernel's
fused linear cross-entropy (Hsu et al. 2024, arXiv:2410.10989); unlike Liger, the gradient is not
taken in the forward pass, because log-probs feed a loss (PPO, DPO) that is not known yet there.

Backends: "naive" (full logits, the reference), "chunked" (this file, any device), "cce" (Apple's
cut-cross-entropy, a maintained library: its Triton kernel on CUDA, which never writes the logits
to memory, and its torch.compile'd path elsewhere, the one the CPU tests check), "auto" (chunked
everywhere until `make gpu-check` has shown cce faster on a GPU). All return float32 whatever the
weights' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from align.text.settings import BACKENDS


def naive_token_log_probs(hidden, weight, targets, bias=None, temperature: float = 1.0) -> torch.Tensor:
    """Reference: materialise logits [N, V]. hidden [N, H], weight [V, H], targets [N] -> [N] fp32."""
    logits = F.linear(hidden, weight, bias).float() / temperature
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


class _ChunkedTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk_size: int):
        rows = hidden.shape[0]
        log_probs = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk_size):
            stop = start + chunk_size
            logits = F.linear(hidden[start:stop], weight, bias).float() / temperature  # [c, V]
            lse[start:stop] = logits.logsumexp(-1)
            log_probs[start:stop] = logits.gather(-1, targets[start:stop, None]).squeeze(-1) - lse[start:stop]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return log_probs

    @staticmethod
    def backward(ctx, grad_log_probs):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        for start in range(0, hidden.shape[0], chunk_size):
            stop = start + chunk_size
            chunk = hidden[start:stop]
            logits = F.linear(chunk, weight, bias).float() / temperature
            # d log p(t) / d z = onehot(t) - softmax(z); z = logits / temperature
            grad_logits = -torch.exp(logits - lse[start:stop, None])
            grad_logits.scatter_add_(-1, targets[start:stop, None], torch.ones_like(lse[start:stop, None]))
            grad_logits *= grad_log_probs[start:stop, None] / temperature
            if need_hidden:
                grad_hidden[start:stop] = grad_logits.to(weight.dtype) @ weight
            if need_weight:
                grad_weight += grad_logits.T @ chunk.float()
            if need_bias:
                grad_bias += grad_logits.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def chunked_token_log_probs(
    hidden, weight, targets, bias=None, temperature: float = 1.0, chunk_size: int = 512
) -> torch.Tensor:
    """Same values as `naive_token_log_probs`; peak extra memory chunk_size x V floats."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedTokenLogProbs.apply(hidden, weight, bias, targets, temperature, chunk_size)


def cce_token_log_probs(hidden, weight, targets, bias=None, temperature: float = 1.0) -> torch.Tensor:
    """cut-cross-entropy's per-token loss, negated: exact gradients (its gradient filter is off, it
    would drop the small-probability terms a policy gradient needs)."""
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        raise ValueError(
            "the cce log-prob backend needs cut-cross-entropy: pip install 'diffusion-align[text]', or "
            "use backend 'chunked'"
        ) from None
    if bias is not None:
        raise ValueError("the cce log-prob backend takes an output layer without bias; use backend 'chunked'")
    impl = "cce" if hidden.is_cuda else "torch_compile"
    loss = linear_cross_entropy(
        hidden / temperature, weight, targets, reduction="none", filter_eps=None, impl=impl
    )
    return -loss.float()


def token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 512,
    backend: str = "auto",
) -> torch.Tensor:
    """Log-probs of `targets` under softmax((hidden W^T + bias) / temperature).

    hidden [..., H], weight [V, H], bias [V] or None, targets [...] (long) -> [...] float32.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown log-prob backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {list(hidden.shape)} and targets {list(targets.shape)} do not match")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden size {hidden.shape[-1]} does not match the projection {list(weight.shape)}")
    shape = targets.shape
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if backend in ("auto", "chunked"):
        values = chunked_token_log_probs(flat_hidden, weight, flat_targets, bias, temperature, chunk_size)
    elif backend == "naive":
        values = naive_token_log_probs(flat_hidden, weight, flat_targets, bias, temperature)
    else:
        values = cce_token_log_probs(flat_hidden, weight, flat_targets, bias, temperature)
    return values.reshape(shape)
