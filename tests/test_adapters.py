"""The DESIGN.md invariants for every tiny family, plus rollout bookkeeping."""

import pytest
import torch
from conftest import tiny_adapter

from align.doctor import run_checks
from samplers.noise import generators_from_seeds
from samplers.types import Trajectory


def test_doctor_invariants_hold(tiny):
    checks = run_checks(tiny, num_steps=8 if tiny.default_steps > 1 else 1)
    for check in checks:
        assert check.passed, f"{tiny.name}: {check.name} deviated by {check.deviation}"
    assert checks[1].deviation == 0 and checks[2].deviation == 0  # exact, not merely close


def test_doctor_passes_at_default_steps_for_sd3_and_sdxl():
    for name in ["tiny:sd3", "tiny:sdxl"]:
        assert all(c.passed for c in run_checks(tiny_adapter(name)))


def test_images_are_float_in_unit_range(tiny):
    images = tiny.generate(["a red circle", "two blue squares"], [0, 1], num_steps=2)
    frames = (tiny.frames,) if hasattr(tiny, "frames") else ()  # a video model's samples are clips
    assert images.shape == (2, *frames, 3, tiny.resolution, tiny.resolution)
    assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.01  # something was drawn


def test_sde_batch_reproduces_sample_by_sample():
    adapter = tiny_adapter("tiny:sd3")
    prompts, seeds = ["a red circle", "two blue squares", "a green triangle"], [5, 6, 7]
    batch = adapter.sample(prompts, generators_from_seeds(seeds), num_steps=4, noise_levels=0.8)
    for i in range(3):
        single = adapter.sample(
            [prompts[i]], generators_from_seeds([seeds[i]]), num_steps=4, noise_levels=0.8
        )
        torch.testing.assert_close(single.latents[0], batch.latents[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.log_probs[0], batch.log_probs[i], atol=1e-2, rtol=1e-5)


def test_trajectory_shapes_and_rescoring_per_sample_steps():
    adapter = tiny_adapter("tiny:sd15")
    trajectory = adapter.sample(
        ["a", "b", "c"], generators_from_seeds([0, 1, 2]), num_steps=5, noise_levels=1.0
    )
    assert trajectory.latents.shape == (3, 6, 4, 16, 16)
    assert trajectory.log_probs.shape == (3, 5) and trajectory.timesteps.shape == (3, 5)
    assert bool((trajectory.log_probs[:, :-1] != 0).all())
    steps = torch.tensor([4, 0, 2])  # a different step for every sample, as DDPO shuffles them
    rescored = adapter.rescore(trajectory, steps)
    expected = trajectory.log_probs[torch.arange(3), steps]
    assert torch.equal(rescored.log_prob, expected)


def test_noise_levels_per_step_mix_ode_and_sde():
    adapter = tiny_adapter("tiny:sd3")
    levels = [0.0, 0.9, 0.0, 0.0]
    trajectory = adapter.sample(
        ["a red circle"], generators_from_seeds([0]), num_steps=4, noise_levels=levels
    )
    assert torch.equal(trajectory.log_probs[0] != 0, torch.tensor([False, True, False, False]))


def test_trajectory_select_and_cat_round_trip():
    adapter = tiny_adapter("tiny:sd3")
    trajectory = adapter.sample(
        ["a", "b", "c", "d"], generators_from_seeds([0, 1, 2, 3]), num_steps=2, noise_levels=0.5
    )
    parts = [trajectory.select([0, 2]), trajectory.select([1, 3])]
    joined = Trajectory.cat(parts)
    order = torch.tensor([0, 2, 1, 3])
    assert joined.prompts == ["a", "c", "b", "d"]
    assert torch.equal(joined.latents, trajectory.latents[order])
    for key in trajectory.cond:
        assert torch.equal(joined.cond[key], trajectory.cond[key][order])


def test_prompt_encoding_is_cached():
    adapter = tiny_adapter("tiny:sd3")
    adapter.clear_cache()
    first = adapter.encode(["a red circle", "a blue square", "a red circle"])
    assert len(adapter._cache) == 2
    assert torch.equal(first["prompt_embeds"][0], first["prompt_embeds"][2])


def test_gradients_flow_through_the_last_steps_only():
    adapter = tiny_adapter("tiny:sd3")
    noise = adapter.initial_noise(generators_from_seeds([0]), 1, 4).requires_grad_(True)
    trajectory = adapter.sample(
        ["a red circle"], None, num_steps=4, noise=noise, grad_steps=4, checkpoint=True
    )
    trajectory.final.sum().backward()
    assert noise.grad is not None and torch.isfinite(noise.grad).all() and noise.grad.abs().sum() > 0
    partial = adapter.sample(["a red circle"], None, num_steps=4, noise=noise.detach(), grad_steps=2)
    assert not partial.latents[:, 2].requires_grad and partial.final.requires_grad is False  # model frozen


def test_unknown_models_and_families_are_refused():
    from samplers.models import load_adapter

    with pytest.raises(ValueError, match="unknown tiny model"):
        load_adapter("tiny:sd9")
    with pytest.raises(ValueError, match="cannot load model"):
        load_adapter("/nonexistent/model/dir")
    with pytest.raises(ValueError, match="unknown model family"):
        load_adapter("tiny:sd3", family="dalle")


def test_guidance_can_hold_the_unconditional_branch_constant():
    from samplers.models import load_adapter

    adapter = load_adapter("tiny:sd3", guidance_scale=4.0)
    unconditional = torch.ones(3, requires_grad=True)
    conditional = torch.full((3,), 2.0, requires_grad=True)
    adapter.guide(unconditional, conditional).sum().backward()
    assert unconditional.grad.tolist() == [-3.0] * 3 and conditional.grad.tolist() == [4.0] * 3  # 1 - s, s
    unconditional.grad, conditional.grad = None, None
    with adapter.detached_unconditional():
        guided = adapter.guide(unconditional, conditional)
    guided.sum().backward()
    assert unconditional.grad is None and conditional.grad.tolist() == [4.0] * 3
    assert guided.tolist() == [5.0] * 3  # the same value: 1 + 4 (2 - 1)


def test_eager_forwards_bypass_the_wrapper_and_restore_it():
    adapter = tiny_adapter("tiny:sd15")
    wrapper = torch.nn.Identity()  # stands for a compiled or distributed wrapper
    adapter.network = wrapper
    try:
        with adapter.eager():
            assert adapter.network is adapter.model
        assert adapter.network is wrapper
        with pytest.raises(RuntimeError), adapter.eager():
            raise RuntimeError("a failed measurement")
        assert adapter.network is wrapper
    finally:
        adapter.network = None
    assert adapter.network is adapter.model


def test_the_pipeline_given_our_encodings_makes_the_images_it_makes_from_the_prompts(tiny):
    """The rollout benchmark hands the pipeline the adapter's cached encodings (a fair comparison:
    the rollout does not re-encode); the pipeline's images are then those it makes from the prompts."""
    from samplers.noise import generators_from_seeds

    prompts = ["a red circle", "two blue squares"]
    own = tiny.pipeline_images(prompts, generators_from_seeds([0, 1]), 2)
    given = tiny.pipeline_images(prompts, generators_from_seeds([0, 1]), 2, cond=tiny.encode(prompts))
    assert own.shape == given.shape and float((own - given).abs().max()) < 1e-5
