"""Chunked and cut-cross-entropy token log-probs against the naive full-logit computation."""

import math

import pytest
import torch

from align.text.logprob import chunked_token_log_probs, naive_token_log_probs, token_log_probs


def _problem(rows=37, hidden=40, vocab=101, bias=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=generator, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=generator) / hidden**0.5).requires_grad_()
    b = torch.randn(vocab, generator=generator).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    upstream = torch.randn(rows, generator=generator)
    return h, w, b, targets, upstream


def _values_and_grads(function, h, w, b, targets, upstream, **kwargs):
    leaves = [x for x in (h, w, b) if x is not None]
    for x in leaves:
        x.grad = None
    out = function(h, w, targets, b, **kwargs)
    (out * upstream).sum().backward()
    return [out.detach()] + [x.grad.clone() for x in leaves]


def test_naive_is_log_softmax_by_hand():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([2, 1])
    # logits row 0: [1, 0, 1] -> log p(2) = 1 - log(2e + 1); row 1: [0, 2, 2] -> 2 - log(1 + 2e^2)
    e = math.e
    expected = torch.tensor([1 - math.log(2 * e + 1), 2 - math.log(1 + 2 * e**2)])
    assert torch.allclose(naive_token_log_probs(h, w, targets), expected)
    # temperature 2 halves the logits: row 0 becomes [0.5, 0, 0.5]
    halved = naive_token_log_probs(h, w, targets, temperature=2.0)[0].item()
    assert halved == pytest.approx(0.5 - math.log(2 * e**0.5 + 1), abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
@pytest.mark.parametrize("bias,temperature", [(False, 1.0), (True, 0.7)])
def test_chunked_equals_naive_values_and_gradients(chunk_size, bias, temperature):
    problem = _problem(bias=bias)
    naive = _values_and_grads(naive_token_log_probs, *problem, temperature=temperature)
    chunked = _values_and_grads(
        chunked_token_log_probs, *problem, temperature=temperature, chunk_size=chunk_size
    )
    for a, b in zip(naive, chunked):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_chunked_never_saves_full_logits_for_backward():
    h, w, b, targets, _ = _problem(rows=64, vocab=500)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        chunked_token_log_probs(h, w, targets, chunk_size=16)
    assert max(saved) < 64 * 500  # hidden (64 x 40) and weight (500 x 40) only, never [N, V]
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        naive_token_log_probs(h, w, targets)
    assert max(saved) >= 64 * 500  # the naive path keeps the logits


def test_frozen_weight_gets_no_gradient_and_shapes_are_kept():
    h, w, _, targets, _ = _problem()
    w = w.detach()
    out = token_log_probs(h.view(1, 37, 40), w, targets.view(1, 37), backend="chunked", chunk_size=5)
    assert out.shape == (1, 37) and out.dtype == torch.float32
    out.sum().backward()
    assert w.grad is None and h.grad is not None


def test_bad_arguments_fail_with_the_problem_named():
    h, w, _, targets, _ = _problem()
    with pytest.raises(ValueError, match="unknown log-prob backend 'fast'"):
        token_log_probs(h, w, targets, backend="fast")
    with pytest.raises(ValueError, match="do not match"):
        token_log_probs(h, w, targets[:5])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_log_probs(h, w, targets, temperature=0.0)


def test_cce_equals_naive_values_and_gradients_on_the_cpu():
    """cut-cross-entropy's per-token path (torch.compile'd on the CPU; its Triton kernel on CUDA is
    checked by `make gpu-check`): log-probs at a temperature and gradients of hidden and weight
    under per-token upstream weights, as the policy losses give them."""
    pytest.importorskip("cut_cross_entropy")
    for temperature in (1.0, 0.7):
        problem = _problem()
        naive = _values_and_grads(naive_token_log_probs, *problem, temperature=temperature)
        h, w, b, targets, upstream = _problem()
        cce = _values_and_grads(
            lambda *a, **k: token_log_probs(*a[:3], bias=a[3], backend="cce", **k),
            h,
            w,
            b,
            targets,
            upstream,
            temperature=temperature,
        )
        for a, c in zip(naive, cce):
            assert torch.allclose(a, c, atol=5e-5), (a - c).abs().max()
    h, w, b, targets, _ = _problem(bias=True)
    with pytest.raises(ValueError, match="without bias; use backend 'chunked'"):
        token_log_probs(h, w, targets, bias=b, backend="cce")
