"""Chunked and Triton token log-probs against the naive full-logit computation."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

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


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    h, w, _, targets, _ = _problem()
    with pytest.raises(ValueError, match="use backend 'chunked'"):
        token_log_probs(h, w, targets, backend="triton")


# Triton reads TRITON_INTERPRET when it is first imported (its own tl.sum/tl.max are jit functions),
# so the kernels run in a fresh interpreter process with the variable set from the start.
INTERPRETED = """
import json, sys, torch
from align.text.logprob import chunked_token_log_probs, naive_token_log_probs, token_log_probs
from align.text.logprob_triton import triton_token_log_probs
errors = []
for rows, hidden, vocab, bias, temperature in json.loads(sys.argv[1]):
    g = torch.Generator().manual_seed(rows)
    h = torch.randn(rows, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_()
    b = torch.randn(vocab, generator=g).requires_grad_() if bias else None
    t = torch.randint(0, vocab, (rows,), generator=g)
    up = torch.randn(rows, generator=g)
    results = {}
    for name, fn in [("naive", naive_token_log_probs), ("chunked", chunked_token_log_probs),
                     ("triton", triton_token_log_probs)]:
        leaves = [x for x in (h, w, b) if x is not None]
        for x in leaves:
            x.grad = None
        out = fn(h, w, t, b, temperature=temperature)
        (out * up).sum().backward()
        results[name] = [out.detach()] + [x.grad.clone() for x in leaves]
    dispatched = token_log_probs(h, w, t, bias=b, temperature=temperature, backend="triton")
    errors.append({
        "vs_naive": max(float((a - c).abs().max()) for a, c in zip(results["naive"], results["triton"])),
        "vs_chunked": max(float((a - c).abs().max()) for a, c in zip(results["chunked"], results["triton"])),
        "dispatched": float((dispatched.detach() - results["triton"][0]).abs().max()),
    })
print(json.dumps(errors))
"""


def test_triton_kernel_equals_chunked_and_naive_under_the_interpreter():
    pytest.importorskip("triton")
    cases = [[37, 40, 101, False, 1.0], [5, 32, 64, True, 0.7], [50, 24, 130, True, 1.3]]
    environment = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETED, json.dumps(cases)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    for case, error in zip(cases, errors):  # values and gradients of hidden, weight, bias
        assert error["vs_naive"] < 2e-5 and error["vs_chunked"] < 2e-5, (case, error)
        assert error["dispatched"] == 0.0
