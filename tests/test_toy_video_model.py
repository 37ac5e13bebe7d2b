"""The toy video model's pretraining (align/toy/video.py), end to end at a few steps."""

import torch

from align.toy import video
from align.toy.pretrain import export
from rewards.toy_video import FRAMES, RESOLUTION
from samplers.toy import VIDEO_ADAPTER_DEFAULTS, load_toy_video_pipeline


def test_the_shipped_settings_match_the_world_and_the_tokenizer():
    assert (VIDEO_ADAPTER_DEFAULTS["frames"], VIDEO_ADAPTER_DEFAULTS["resolution"]) == (FRAMES, RESOLUTION)
    assert VIDEO_ADAPTER_DEFAULTS["max_sequence_length"] == video.MAX_LENGTH
    tokenizer = video.build_tokenizer()
    longest = "a purple triangle moving right right of an orange square"
    ids = tokenizer([longest]).input_ids[0]
    assert len(ids) == len(longest.split()) + 1 <= video.MAX_LENGTH  # one token a word, and the end
    assert tokenizer.unk_token_id not in ids


def test_the_vae_codes_each_frame_alone():
    vae = video.build_vae().eval()
    clip = torch.rand(1, 3, FRAMES, RESOLUTION, RESOLUTION) * 2 - 1
    changed = clip.clone()
    changed[:, :, 3] = 0  # frame 3 only
    with torch.no_grad():
        a, b = (vae.encode(x).latent_dist.mean for x in (clip, changed))
    difference = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert a.shape == (1, video.LATENT_CHANNELS, FRAMES, 8, 8)
    assert float(difference[3]) > 0 and float(difference[torch.arange(FRAMES) != 3].max()) == 0


def test_pretraining_stages_run_and_the_export_loads_as_the_toy_video_model(tmp_path):
    report = video.train_vae(tmp_path, steps=2, batch_size=8, calibrate=4)
    assert len(report["latents_std"]) == video.LATENT_CHANNELS and all(s > 0 for s in report["latents_std"])
    assert video.build_data(tmp_path, count=4, batch_size=2) == {"count": 4}
    trainer = video.VideoDiffusionTrainer(tmp_path, total_steps=2, batch_size=2, warmup=1)
    before = [p.clone() for p in trainer.pipeline.transformer.parameters()]
    losses = [trainer.train_step(), trainer.train_step()]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.pipeline.transformer.parameters()))
    trainer.save()
    destination = export(tmp_path, dtype=torch.float32, trainer_class=video.VideoDiffusionTrainer)
    pipeline, defaults = load_toy_video_pipeline(path=destination)
    from samplers.adapters.wan import WanAdapter

    options = {k: v for k, v in defaults.items() if k != "family"} | {"default_steps": 2}
    adapter = WanAdapter(pipeline, **options)
    clips = adapter.generate(["a red circle moving left slowly"], [0])
    assert clips.shape == (1, FRAMES, 3, RESOLUTION, RESOLUTION)
    swap = video.direction_swap_test(adapter, ["a red circle moving left slowly"], seeds=1)
    assert swap["pairs"] == 1 and 0 <= swap["flip_fraction"] <= 1


class Rendered:
    """A stand-in video model drawing the world's own clips; `deaf` ignores the direction word."""

    guidance_scale, default_steps, frames = 1.0, 1, FRAMES

    def __init__(self, deaf: bool = False):
        self.deaf = deaf

    def generate(self, prompts, seeds, num_steps=None, batch_size=16):
        from rewards.toy_video import VideoSpec, parse_video_prompt

        def heard(prompt):
            spec = parse_video_prompt(prompt)
            return VideoSpec(spec.scene, "left", spec.speed) if self.deaf else spec

        return video.render_clips([heard(p) for p in prompts], seeds)


def test_the_direction_swap_test_flips_for_a_model_that_listens_and_not_for_one_that_does_not():
    from align.evaluate import format_swap_test
    from rewards.toy_video import video_prompt_splits

    prompts = video_prompt_splits()["heldout"][::8]
    listening = video.direction_swap_test(Rendered(), prompts, seeds=2)
    assert listening["pairs"] == 2 * len(prompts) and listening["detected"] == listening["pairs"]
    assert listening["flip_fraction"] == 1.0 and listening["pixel_difference"] > 0
    deaf = video.direction_swap_test(Rendered(deaf=True), prompts, seeds=2)
    assert deaf["flip_fraction"] == 0.0 and deaf["pixel_difference"] == 0.0 < deaf["seed_difference"]
    assert format_swap_test(listening).startswith(f"swap test: direction flips in 1.000 of {listening['pairs']} pairs")


def test_the_vae_stage_resumes_from_its_saved_vae_and_refuses_without_one(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no VAE at"):
        video.train_vae(tmp_path, steps=1, batch_size=4, calibrate=2, resume=True)
    video.train_vae(tmp_path, steps=1, batch_size=4, calibrate=2)
    from diffusers import AutoencoderKLWan

    first = AutoencoderKLWan.from_pretrained(tmp_path / "vae").state_dict()
    video.train_vae(tmp_path, steps=1, batch_size=4, calibrate=2, resume=True)
    second = AutoencoderKLWan.from_pretrained(tmp_path / "vae").state_dict()
    moved = [k for k in first if not torch.equal(first[k], second[k])]  # a fresh stage would repeat `first` exactly
    assert moved and all(not bool(w.any()) for w in video.causal_past_taps(AutoencoderKLWan.from_pretrained(tmp_path / "vae")))


def test_the_trainer_evaluates_the_video_world_s_splits_and_direction_swap(tmp_path, monkeypatch):
    video.train_vae(tmp_path, steps=1, batch_size=4, calibrate=2)
    video.build_data(tmp_path, count=2, batch_size=2)
    trainer = video.VideoDiffusionTrainer(tmp_path, total_steps=1, batch_size=2)
    few = {name: prompts[:1] for name, prompts in video.video_prompt_splits().items()}
    monkeypatch.setattr(video.VideoDiffusionTrainer, "splits", staticmethod(lambda: few))
    monkeypatch.setitem(video.VIDEO_ADAPTER_DEFAULTS, "default_steps", 2)
    results = trainer.evaluate(seeds=1)
    assert results["swap"]["flips"][0] == "direction" and results["swap"]["pairs"] == 1
    assert {"direction", "speed"} <= set(results["heldout"]["categories"])


def test_the_shipped_video_vae_codes_frames_alone_and_the_verifier_reads_its_reconstructions():
    """The VAE stage's output ships as the toy video pipeline's VAE (2 x 600 steps of 64 frames)."""
    import random

    from diffusers import AutoencoderKLWan

    from rewards.geneval_video import evaluate_clips
    from samplers.toy import VIDEO_PIPELINE_DIR

    vae = AutoencoderKLWan.from_pretrained(VIDEO_PIPELINE_DIR / "vae").eval()
    assert all(not bool(w.any()) for w in video.causal_past_taps(vae))
    rng = random.Random(11)
    prompts = video.balanced_prompts(rng, 16, split="heldout")
    clips = video.render_clips(prompts, [rng.randrange(2**31) for _ in prompts])
    with torch.no_grad():
        latents = vae.encode(clips.transpose(1, 2) * 2 - 1).latent_dist.mean
        reconstructed = (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1).transpose(1, 2)
    assert float((reconstructed - clips).abs().mean()) < 0.01
    assert sum(r["all"] for r in evaluate_clips(reconstructed, prompts)) >= 15  # of 16


def test_the_shipped_toy_video_model_loads_offline_and_draws_the_colours_it_is_asked_for():
    """A floor on the shipped base (6,000 steps; docs/video.md): held-out singles x 2 seeds (48 clips) read
    colour 0.521 when measured (SE 0.072); the floor sits 3 SE below it and well above chance (1/6), so
    float rounding that flips a few clips cannot fail it, while a base that lost its colours does."""
    import numpy as np

    from align.recipes import load_prompts
    from rewards.geneval_video import evaluate_clips
    from rewards.toy_video import parse_video_prompt
    from samplers.adapters.wan import WanAdapter
    from samplers.models import load_adapter

    adapter = load_adapter("toy-video")
    assert isinstance(adapter, WanAdapter) and adapter.frames == 9
    singles = [p for p in load_prompts("video-heldout") if parse_video_prompt(p).kind == "single"]
    prompts = [p for p in singles for _ in range(2)]
    with torch.no_grad():
        clips = adapter.generate(prompts, list(range(len(prompts))))
    assert clips.shape == (48, 9, 3, 32, 32)
    colour = np.mean([r["constraints"]["colour"] for r in evaluate_clips(clips, prompts)])
    assert colour >= VIDEO_COLOUR_FLOOR, colour


VIDEO_COLOUR_FLOOR = 0.30


def test_the_motion_and_direction_terms_weigh_what_moves_and_the_direction_word(tmp_path):
    """motion_weight adds the error of the velocity's frame differences (none for an error constant in
    time); direction_weight a logistic loss on how much better the prompt predicts than its direction
    swap (log 2 for a model deaf to the word), skipping caption-dropped samples."""
    import math

    from rewards.toy_video import swap_direction

    video.train_vae(tmp_path, steps=1, batch_size=4, calibrate=2)
    video.build_data(tmp_path, count=2, batch_size=2)
    trainer = video.VideoDiffusionTrainer(tmp_path, total_steps=1, batch_size=2, motion_weight=2.0)
    target = torch.randn(2, video.LATENT_CHANNELS, FRAMES, 8, 8)
    prompts = ["a red circle moving left slowly", "two blue squares moving up quickly"]
    offset = torch.zeros_like(target)
    trainer.predict = lambda noisy, sigma, p: target + offset
    offset[:] = 0.5  # the same error in every frame: no motion term
    assert math.isclose(float(trainer.loss(target, torch.ones(2), prompts, target)), 0.25, rel_tol=1e-6)
    offset[:, :, 4] = 1.5  # one frame off by 1 more: 2 of the 8 frame differences carry it
    loss = float(trainer.loss(target, torch.ones(2), prompts, target))
    assert math.isclose(loss, (0.25 * 8 + 2.25) / 9 + 2.0 * 2 / 8, rel_tol=1e-5)

    trainer.motion_weight, trainer.direction_weight, trainer.direction_temperature = 0.0, 1.0, 0.1
    swapped = [swap_direction(p) for p in prompts]

    def exact_for(chosen):  # the target for prompts in `chosen`, off by 1 for any other
        def predict(noisy, sigma, p):
            return target[: len(p)] + torch.tensor([0.0 if q in chosen else 1.0 for q in p]).view(-1, 1, 1, 1, 1)

        return predict

    trainer.predict = exact_for(prompts)
    gap = float(trainer.loss(target, torch.ones(2), prompts, target))  # a squared-error gap of 1, over 0.1
    assert math.isclose(gap, math.log1p(math.exp(-10)), rel_tol=1e-5)
    trainer.predict = exact_for(swapped)  # prefers the swapped word
    assert math.isclose(float(trainer.loss(target, torch.ones(2), prompts, target)), 1 + math.log1p(math.exp(10)), rel_tol=1e-5)
    trainer.predict = lambda noisy, sigma, p: target[: len(p)] + 0.5  # deaf to the word
    assert math.isclose(float(trainer.loss(target, torch.ones(2), prompts, target)), 0.25 + math.log(2), rel_tol=1e-5)
    seen = []
    trainer.predict = lambda noisy, sigma, p: seen.append(list(p)) or exact_for(prompts)(noisy, sigma, p)
    trainer.loss(target, torch.ones(2), ["", prompts[1]], target)
    assert seen[1] == [swapped[1]]  # the caption-dropped sample has no swap


def test_pretrain_toy_passes_the_loss_terms_to_the_video_trainer_and_the_image_world_refuses_them(
    tmp_path, monkeypatch, capsys
):
    from align.cli import main
    from align.toy import pretrain

    seen = {}
    monkeypatch.setattr(pretrain, "train_diffusion", lambda out, **kw: seen.update(kw) or {"step": 1, "done": True})
    video_args = ["pretrain-toy", "--world", "video", "--stage", "diffusion", "--out", str(tmp_path / "v")]
    assert main([*video_args, "--motion-weight", "2", "--direction-weight", "0.5"]) == 0
    assert (seen["motion_weight"], seen["direction_weight"]) == (2.0, 0.5)
    assert seen["trainer_class"] is video.VideoDiffusionTrainer
    seen.clear()
    assert main(video_args) == 0 and (seen["motion_weight"], seen["direction_weight"]) == (0.0, 0.0)  # off
    seen.clear()
    image = tmp_path / "image"
    code = main(["pretrain-toy", "--stage", "diffusion", "--out", str(image), "--motion-weight", "1"])
    assert code == 2 and not seen and not image.exists()
    assert capsys.readouterr().err.strip().endswith("are the video world's; add --world video")
