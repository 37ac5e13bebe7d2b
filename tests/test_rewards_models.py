"""Model-based rewards on tiny random models of their real architectures, loaded through their real
loading paths: PickScore (transformers CLIP), HPS v2.1 (open_clip + checkpoint), DINOv2 rewards and
the Adv-GRPO discriminator (transformers and timm backbones)."""

import pytest
import torch
import torch.nn.functional as F

from align.checkpoint import load_state, save_state
from rewards.base import build_reward, quantise, to_pil
from rewards.dino import kernel_matrix, leave_one_out_mmd, median_bandwidth
from rewards.tiny import tiny_dino, tiny_hps, tiny_pickscore

PROMPTS = ["a photo of a cat", 'a sign that says "OPEN"', "closed"]


def images(batch: int = 3, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields plus mild noise, off the uint8 grid."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(batch, 3, height, width, generator=generator)).clamp(0, 1)


def assert_differentiable_and_agrees_with_uint8(reward, x, prompts):
    """Gradients reach the pixels (finite, non-zero), and the value on the uint8-rounded image agrees
    within quantisation error: rounding moves each pixel by e ~ U(-0.5, 0.5)/255, so to first order
    |Δr| = |∇r . e| <= |∇r|_1 * 0.5/255 (hard bound) and has std σ = |∇r|_2 / (255 sqrt(12)); both
    are asserted, the second at 6σ (measured: at most 3σ for every reward here)."""
    x = x.clone().requires_grad_(True)
    values = reward(x, prompts)
    (gradient,) = torch.autograd.grad(values.sum(), x)
    assert torch.isfinite(gradient).all()
    assert (gradient.flatten(1).abs().sum(1) > 0).all()
    with torch.no_grad():
        rounded = reward(quantise(x), prompts)
    difference = (values.detach() - rounded).abs()
    bound = 1.5 * gradient.flatten(1).abs().sum(1) * 0.5 / 255  # 50% slack for curvature
    sigma = gradient.flatten(1).norm(dim=1) / (255 * 12**0.5)
    assert (difference <= bound + 1e-6).all(), (difference, bound)
    assert (difference <= 6 * sigma + 1e-6).all(), (difference, sigma)
    return values.detach(), difference, sigma


# --- PickScore ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickscore(tmp_path_factory):
    directory = tiny_pickscore(tmp_path_factory.mktemp("pickscore"))
    return build_reward("pickscore", model=directory, processor=directory)


def test_pickscore_is_logit_scale_times_cosine_and_agrees_with_the_clip_processor(pickscore):
    x = images()
    values, _, _ = assert_differentiable_and_agrees_with_uint8(pickscore, x, PROMPTS)
    clip, processor = pickscore.clip, pickscore.processor
    with torch.no_grad():  # the reference PIL path: CLIPProcessor on PIL images, as PickScore's README
        pixels = processor(images=to_pil(x), return_tensors="pt").pixel_values
        image = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        tokens = processor.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        text = clip.text_projection(clip.text_model(**tokens).pooler_output)
        expected = clip.logit_scale.exp() * F.cosine_similarity(image, text)
    torch.testing.assert_close(values, expected, atol=1e-3 * float(clip.logit_scale.exp()), rtol=0)
    assert pickscore._text_cache.keys() == set(PROMPTS)


def test_pickscore_missing_weights_says_how_to_get_them():
    with pytest.raises(ValueError, match="cannot load the PickScore .*huggingface-cli download"):
        build_reward("pickscore")


# --- HPS v2.1 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    return tiny_hps(tmp_path_factory.mktemp("hps"))


def test_hps_loads_the_checkpoint_state_dict_and_scores_letterboxed_cosine(hps_files):
    import open_clip

    model, checkpoint = hps_files
    hps = build_reward("hps", model=model, checkpoint=checkpoint)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    torch.testing.assert_close(hps.clip.state_dict()["visual.proj"], state["visual.proj"])
    x = images(width=64)  # wide: letterboxed to 32 x 32, the top and bottom padded black
    values, _, _ = assert_differentiable_and_agrees_with_uint8(hps, x, PROMPTS)
    assert ((values > -1) & (values < 1)).all()
    with torch.no_grad():
        letterboxed = F.interpolate(x, size=(20, 32), mode="bicubic", antialias=True)
        letterboxed = F.pad(letterboxed, (0, 0, 6, 6))
        mean, std = torch.tensor(hps.normalisation[0]), torch.tensor(hps.normalisation[1])
        pixels = (letterboxed - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        image = F.normalize(hps.clip.encode_image(pixels), dim=-1)
        text = F.normalize(hps.clip.encode_text(open_clip.get_tokenizer(model)(PROMPTS)), dim=-1)
    torch.testing.assert_close(values, (image * text).sum(-1), atol=1e-5, rtol=0)


def test_hps_missing_checkpoint_fails_before_building_the_model():
    with pytest.raises(ValueError, match="cannot fetch weights 'xswu/HPSv2/HPS_v2.1_compressed.pt'"):
        build_reward("hps")


def test_hps_checkpoint_of_another_architecture_is_named(hps_files, tmp_path):
    model, _ = hps_files
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, wrong)
    with pytest.raises(ValueError, match=f"HPS checkpoint {wrong} does not fit open_clip model"):
        build_reward("hps", model=model, checkpoint=str(wrong))


# --- DINOv2 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return tiny_dino(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def references():
    return images(batch=6, height=36, width=36, seed=1)


def test_dino_is_the_mean_cosine_to_the_k_nearest_references(dino_dir, references):
    reward = build_reward("dino", model=dino_dir, references=references, k=2)
    x = images()
    values, _, _ = assert_differentiable_and_agrees_with_uint8(reward, x, [""] * 3)
    with torch.no_grad():
        features = F.normalize(reward.backbone(x)[0], dim=-1)
        expected = (features @ reward.references.T).sort(-1, descending=True).values[:, :2].mean(-1)
    torch.testing.assert_close(values, expected)
    exact = reward(references[:1], [""])  # a reference itself: its nearest is itself, cosine 1
    assert float(exact) <= 1 + 1e-6 and float(exact) > float(values.max()) - 1e-6


def test_dino_reads_a_folder_of_references_of_any_size(dino_dir, references, tmp_path):
    for i, picture in enumerate(to_pil(references[:3])):
        picture.resize((36 + 8 * i, 36)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    reward = build_reward("dino", model=dino_dir, references=str(tmp_path), k=1)
    assert reward.references.shape == (3, 32)
    torch.testing.assert_close(reward.references.norm(dim=-1), torch.ones(3))


def test_dino_construction_errors(dino_dir, references, tmp_path):
    with pytest.raises(ValueError, match="references is required"):
        build_reward("dino", model=dino_dir)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 6\]"):
        build_reward("dino", model=dino_dir, references=references, k=7)
    with pytest.raises(ValueError, match="no image files"):
        build_reward("dino", model=dino_dir, references=str(tmp_path))
    with pytest.raises(ValueError, match="reward references: pixel values must lie in"):
        build_reward("dino", model=dino_dir, references=references * 3)
    with pytest.raises(ValueError, match="cannot load the DINOv2 model from 'facebook/dinov2-base'"):
        build_reward("dino", references=references)


def test_leave_one_out_mmd_equals_brute_force():
    generator = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    y = F.normalize(torch.randn(7, 8, generator=generator), dim=-1)

    def mmd(a, b, h):
        return (
            kernel_matrix(a, a, h).mean() + kernel_matrix(b, b, h).mean() - 2 * kernel_matrix(a, b, h).mean()
        )

    for bandwidth in (None, median_bandwidth(y)):
        expected = torch.stack(
            [5 * (mmd(x[torch.arange(5) != i], y, bandwidth) - mmd(x, y, bandwidth)) for i in range(5)]
        )
        torch.testing.assert_close(leave_one_out_mmd(x, y, bandwidth), expected, atol=1e-5, rtol=1e-4)


def test_leave_one_out_mmd_rewards_coverage_and_fidelity():
    references = torch.eye(4)
    duplicated = leave_one_out_mmd(references[[0, 1, 1, 2]], references, bandwidth=1.0)
    assert duplicated[0] == pytest.approx(float(duplicated[3])) and duplicated[1] == duplicated[2]
    assert duplicated[0] > duplicated[1] + 0.5  # a second copy of a covered reference adds little
    far = torch.cat([references[:3], torch.full((1, 4), 3.0)])
    values = leave_one_out_mmd(far, references, bandwidth=1.0)
    assert (values[:3] > values[3] + 0.3).all()  # a sample far from every reference is worth least


def test_dino_distribution_uses_the_whole_batch(dino_dir, references):
    reward = build_reward("dino-distribution", model=dino_dir, references=references, chunk_size=2)
    x = images(batch=4)
    values, _, _ = assert_differentiable_and_agrees_with_uint8(reward, x, [""] * 4)
    with torch.no_grad():
        features = F.normalize(reward.backbone(x)[0], dim=-1)
    torch.testing.assert_close(values, leave_one_out_mmd(features, reward.references, reward.bandwidth))
    assert reward.bandwidth == pytest.approx(median_bandwidth(reward.references))
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        reward(x[:1], [""])


def test_timm_backbone_loads_a_local_dinov2(references, tmp_path):
    import timm
    from timm.models import save_for_hf

    args = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8, num_classes=0)
    torch.manual_seed(0)
    network = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **args)
    save_for_hf(network, str(tmp_path), model_args=args, safe_serialization=True)
    reward = build_reward("dino", model=f"timm:local-dir:{tmp_path}", references=references, k=3)
    x = images()
    values, _, _ = assert_differentiable_and_agrees_with_uint8(reward, x, [""] * 3)
    with torch.no_grad():
        pixels = reward.backbone.transform(x)
        cls = F.normalize(network.eval().forward_features(pixels)[:, 0], dim=-1)
    expected = (cls @ reward.references.T).topk(3, dim=-1).values.mean(-1)
    torch.testing.assert_close(values, expected)
    with pytest.raises(ValueError, match="cannot load timm model 'hf-hub:timm/nope'"):
        build_reward("dino", model="timm:hf-hub:timm/nope", references=references)


# --- Adv-GRPO discriminator -----------------------------------------------------------------------


def test_discriminator_learns_to_separate_real_from_fake(dino_dir, references):
    reward = build_reward("discriminator", model=dino_dir, hidden=32, lr=1e-2)
    fake = images(batch=6, seed=2) * 0.3  # dark images
    before = reward(fake, [""] * 6).mean() - reward(references, [""] * 6).mean()
    stats = [reward.update(references, fake) for _ in range(30)]
    after = reward(fake, [""] * 6).mean() - reward(references, [""] * 6).mean()
    assert stats[-1]["loss"] < stats[0]["loss"] and stats[-1]["accuracy"] == 1.0
    assert float(after.detach()) < float(before.detach()) - 1.0
    assert reward.steps == 30
    assert_differentiable_and_agrees_with_uint8(reward, images(), [""] * 3)


def test_discriminator_state_round_trips_exactly_through_a_checkpoint(dino_dir, references, tmp_path):
    fake = images(batch=6, seed=3)
    first = build_reward("discriminator", model=dino_dir, hidden=16, seed=0)
    for _ in range(3):
        first.update(references, fake)
    save_state(tmp_path, {"rewards": first.state_dict()})
    second = build_reward("discriminator", model=dino_dir, hidden=16, seed=1)
    assert not torch.equal(second(fake, [""] * 6), first(fake, [""] * 6))
    second.load_state_dict(load_state(tmp_path)["rewards"])
    assert torch.equal(second(fake, [""] * 6), first(fake, [""] * 6)) and second.steps == 3
    assert first.update(references, fake) == second.update(references, fake)  # Adam moments restored too
    assert all(torch.equal(a, b) for a, b in zip(first.head_parameters(), second.head_parameters()))


def test_discriminator_leaves_the_global_rng_alone_and_checks_its_input(dino_dir, references):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    reward = build_reward("discriminator", model=dino_dir, hidden=8, local=False)
    torch.testing.assert_close(torch.rand(3), expected)
    with pytest.raises(ValueError, match=r"reward discriminator \(real images\): NaN or inf pixels"):
        reward.update(references * float("nan"), references)
    with pytest.raises(ValueError, match="state has heads"):
        reward.load_state_dict(build_reward("discriminator", model=dino_dir, hidden=8).state_dict())


def test_discriminator_missing_backbone_weights_says_how_to_get_them():
    with pytest.raises(
        ValueError, match="cannot load the DINOv2 model from 'facebook/dinov2-base'.*download"
    ):
        build_reward("discriminator")


def test_uncertainty_weighted_ensemble_of_differentiable_rewards(dino_dir, references):
    members = [
        {"name": "dino", "args": {"model": dino_dir, "references": references, "k": k}} for k in (1, 4)
    ]
    ensemble = build_reward("ensemble", members=members, mode="uncertainty", penalty_weight=2.0)
    assert ensemble.differentiable
    x = images()
    values, _, _ = assert_differentiable_and_agrees_with_uint8(ensemble, x, [""] * 3)
    with torch.no_grad():
        rows = torch.stack([member(x, [""] * 3) for member in ensemble.members])
    torch.testing.assert_close(values, rows.mean(0) - 2.0 * rows.std(0, unbiased=False))
