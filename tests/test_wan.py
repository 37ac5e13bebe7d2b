"""The Wan text-to-video adapter on tiny:wan (Wan 2.1's architecture, built in code)."""

import pytest
import torch
from conftest import tiny_adapter

from samplers.noise import generators_from_seeds


def test_a_sample_is_a_clip_and_its_steps_are_scored_over_the_whole_latent():
    adapter = tiny_adapter("tiny:wan")
    assert adapter.latent_shape() == (16, 3, 4, 4)  # 9 frames -> 3 latent frames, 32 px -> 4
    trajectory = adapter.sample(["a red circle", "two blue squares"], generators_from_seeds([0, 1]), num_steps=3,
                                noise_levels=0.7)
    assert trajectory.latents.shape == (2, 4, 16, 3, 4, 4)
    assert bool((trajectory.log_probs != 0).all()) and bool(torch.isfinite(trajectory.log_probs).all())
    video = adapter.decode(trajectory.final)
    assert video.shape == (2, 9, 3, 32, 32) and video.min() >= 0 and video.max() <= 1
    # encode_images inverts the normalisation decode applies: a clip round-trips to latents of the same shape
    assert adapter.encode_images(video).shape == trajectory.final.shape


def test_a_unipc_scheduler_is_replaced_by_euler_at_wan_s_flow_shift():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from samplers.adapters.wan import WanAdapter
    from samplers.tiny import build_wan

    pipeline = build_wan()
    pipeline.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=5.0)
    adapter = WanAdapter(pipeline, resolution=32, max_sequence_length=16)
    assert isinstance(adapter.pipeline.scheduler, FlowMatchEulerDiscreteScheduler)
    assert adapter.pipeline.scheduler.config.shift == 5.0
    sigmas = adapter.schedule(4).sigmas
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0

    def shifted(t):  # Wan's flow shift s: s t / (1 + (s - 1) t)
        return 5 * t / (1 + 4 * t)

    # diffusers spaces the steps evenly from 1 to the shifted smallest training sigma, then shifts them
    assert float(sigmas[1]) == pytest.approx(shifted(1 - (1 - shifted(1e-3)) / 3), abs=1e-6)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        WanAdapter(build_wan(), frames=8, resolution=32)


def test_lora_is_saved_in_diffusers_format_and_wan_s_own_loader_reads_it(tmp_path):
    from align.config import LoraSettings
    from align.policy import ImagePolicy
    from samplers.tiny import build_wan

    adapter = tiny_adapter("tiny:wan")
    policy = ImagePolicy(adapter, lora=LoraSettings(rank=4, alpha=4))
    trained = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trained and all(".attn1." in n or ".attn2." in n for n in trained)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05)
    policy.save_weights(tmp_path)
    ours = adapter.generate(["a red circle"], [0], num_steps=2)
    fresh = build_wan()
    fresh.load_lora_weights(str(tmp_path / "lora"))
    from samplers.adapters.wan import WanAdapter

    loaded = WanAdapter(fresh, resolution=32, max_sequence_length=16).generate(["a red circle"], [0], num_steps=2)
    base = WanAdapter(build_wan(), resolution=32, max_sequence_length=16).generate(["a red circle"], [0], num_steps=2)
    assert float((ours - loaded).abs().max()) < 1e-5 < float((ours - base).abs().max())
