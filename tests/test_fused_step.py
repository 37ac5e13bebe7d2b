"""The fused step (samplers/fused.py): one function of tensors for every sampler family, compiled
whole, drawing the same noise as the family's step and rescoring as it does."""

from __future__ import annotations

import pytest
import torch

from samplers.fused import fused_step, step_tables
from samplers.noise import generators_from_seeds
from samplers.rollout import rescore, rollout

MODELS = ["tiny:sd3", "tiny:flux", "tiny:sd15", "tiny:sd2"]  # flow SDE x 2, DDIM epsilon, DDIM v


@pytest.fixture(scope="module")
def adapters():
    from samplers.models import load_adapter

    return {name: load_adapter(name) for name in MODELS}


def sample(adapter, kernel: str, levels=0.7):
    prompts = ["a red circle", "a blue square", "a red circle", "a green ring"]
    noise = adapter.initial_noise(generators_from_seeds([0, 1, 2, 3]), 4, 10)
    with torch.no_grad():
        return rollout(
            adapter.denoise,
            adapter.step,
            adapter.schedule(10),
            noise,
            adapter.encode(prompts),
            prompts=prompts,
            noise_levels=levels,
            generators=generators_from_seeds([10, 11, 12, 13]),
            kernel=kernel,
        )


@pytest.mark.parametrize("model", MODELS)
def test_the_tables_are_the_family_steps_coefficients(adapters, model):
    """mean = a x + b output, std: read off the family's step and checked linear; the flow SDE's fused
    rollout is its rollout bit for bit (same draws, same products), DDIM's within float rounding."""
    adapter = adapters[model]
    family, fused = sample(adapter, "family"), sample(adapter, "fused")
    tolerance = 0.0 if adapter.family == "flow" else 1e-4
    assert (fused.latents - family.latents).abs().max() <= tolerance
    assert torch.allclose(fused.log_probs, family.log_probs, rtol=1e-6, atol=tolerance)
    schedule = adapter.schedule(10)
    tables = step_tables(adapter.step, schedule.sigmas, [0.7] * 10)
    assert tables.a.shape == tables.b.shape == tables.std.shape == (10,) and bool((tables.std > 0).all())


def test_the_compiled_step_has_no_graph_break_and_never_recompiles(adapters):
    x, out, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    a, b, std = torch.tensor(0.9), torch.tensor(-0.1), torch.tensor(0.2)
    explained = torch._dynamo.explain(fused_step)(x, out, noise, a, b, std)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    adapter = adapters["tiny:sd3"]
    eager = sample(adapter, "fused")
    sample(adapter, "compiled")  # compiles its one graph
    with torch.compiler.set_stance("fail_on_recompile"):  # every later step and rollout reuses it
        compiled = sample(adapter, "compiled")
    assert (compiled.latents - eager.latents).abs().max() <= 1e-5
    # the log-prob sums the latent's terms in the order the compiled kernel chooses (its vector width is
    # the CPU's): equal within a few float32 roundings of the batch's largest log-prob, where a value
    # that nets out near zero from terms of thousands has no relative precision to compare (this AMD
    # EPYC's kernel differs from eager by 1.2e-4 at 3,767, 34.9531 against 34.9532)
    scale = float(eager.log_probs.abs().max())
    assert (compiled.log_probs - eager.log_probs).abs().max() <= 4 * torch.finfo(torch.float32).eps * scale


@pytest.mark.parametrize("model", ["tiny:sd3", "tiny:sd15"])
def test_a_compiled_rollout_rescores_as_its_family_step_does(adapters, model):
    """Training re-scores a trajectory with the family's own step: the compiled rollout's log-probs
    are what that re-scoring gives its samples."""
    adapter = adapters[model]
    trajectory = sample(adapter, "compiled")
    with torch.no_grad():
        for step in (0, 4, 8):
            out = rescore(adapter.denoise, adapter.step, trajectory, torch.full((4,), step))
            assert torch.allclose(out.log_prob, trajectory.log_probs[:, step], rtol=1e-5, atol=1e-3)


def test_a_clamped_ddim_step_keeps_its_own_function():
    """DDIM's clip_sample clamps the x_0 prediction: not linear, so no tables (the family's step runs)."""
    from functools import partial

    from samplers.ddim import ddim_step

    sigmas = torch.linspace(0.99, 0.05, 6)
    assert step_tables(ddim_step, sigmas, [0.5] * 5) is not None
    for clip in (0.5, 10.0):
        assert step_tables(partial(ddim_step, clip_sample_range=clip), sigmas, [0.5] * 5) is None


def test_the_run_samples_with_the_configured_kernel_and_noise():
    """sampling.step_kernel and sampling.noise reach the adapter: a Flow-GRPO epoch on tiny:sd3 with the
    fused step collects the very rewards of the family step (the flow SDE is the same bit for bit);
    with counter noise it draws other samples."""
    import tempfile

    from align.config import config_from_data
    from align.loop import Run

    def first_epoch_rewards(**sampling):
        config = config_from_data(
            {
                "model": {"name": "tiny:sd3"},
                "algorithm": {"name": "flow-grpo"},
                "rewards": {"terms": [{"name": "jpeg-compressibility"}]},
                "sampling": {"num_steps": 6, **sampling},
                "train": {"batch_size": 4, "group_size": 2, "micro_batch_size": 4},
                "logging": {"tensorboard": False, "progress": False},
            }
        )
        with tempfile.TemporaryDirectory() as out:
            run = Run(config, out)
            assert (run.adapter.step_kernel, run.adapter.noise) == (
                sampling.get("step_kernel", "family"),
                sampling.get("noise", "generators"),
            )
            return run.train_epoch()["rewards"]["jpeg-compressibility"]

    family = first_epoch_rewards()
    assert first_epoch_rewards(step_kernel="fused") == family
    assert first_epoch_rewards(noise="counter") != family
