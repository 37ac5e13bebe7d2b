"""ReNO noise optimisation: the regulariser's arithmetic, gradients reaching the noise, improvement."""

import json
import math

import pytest
import torch
from conftest import tiny_adapter

from align.optimize import OptimizeSettings, best_of_n, noise_norm_regulariser, reno
from rewards.base import Reward


class Brightness(Reward):
    """100 x mean pixel value (real rewards move by tens: HPS, PickScore, aesthetic)."""

    differentiable = True

    def score(self, images, prompts):
        return 100 * images.mean(dim=(1, 2, 3))


def test_noise_regulariser_by_hand_and_its_minimum_on_the_shell():
    d = 64
    ones = torch.ones(1, d)  # r = sqrt(d)
    assert noise_norm_regulariser(ones).item() == pytest.approx(d / 2 - (d - 1) * 0.5 * math.log(d), rel=1e-6)
    radii = torch.linspace(4, 12, 81)
    values = torch.stack([noise_norm_regulariser(torch.full((1, d), r / math.sqrt(d)))[0] for r in radii])
    assert float(radii[values.argmin()]) == pytest.approx(math.sqrt(d - 1), abs=0.1)  # the chi mode


def test_gradients_reach_the_noise_through_a_multistep_sampler():
    adapter = tiny_adapter("tiny:sd3")
    noise = adapter.initial_noise(None, 2, 4).requires_grad_(True)
    trajectory = adapter.sample(
        ["a red circle", "a blue square"], None, num_steps=4, noise=noise, grad_steps=4, checkpoint=True
    )
    Brightness()(adapter.decode(trajectory.final), ["a", "b"]).sum().backward()
    assert torch.isfinite(noise.grad).all() and (noise.grad.flatten(1).abs().sum(1) > 0).all()


def test_short_reno_raises_every_images_reward_and_beats_best_of_n():
    adapter = tiny_adapter("tiny:sd3")
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    rewards = {"bright": Brightness()}
    settings = OptimizeSettings(iterations=8, lr=5.0, grad_clip=1.0, num_steps=4)
    result = reno(adapter, prompts, [0, 1, 2], rewards, settings)
    first, best = torch.tensor(result["history"][0]["total"]), result["reward"]
    assert (best > first + 0.1).all(), (first, best)
    baseline = best_of_n(adapter, prompts, [0, 1, 2], rewards, settings, n=9)
    assert best.mean() > baseline["reward"].mean()
    assert result["images"].shape == (3, 3, 32, 32)


def test_reno_on_the_toy_model_raises_the_toy_clip_score_of_every_image_with_room():
    from rewards.base import build_reward
    from samplers.models import load_adapter

    adapter = load_adapter("toy")
    prompts = ["a blue square left of a red circle", "three green triangles", "a yellow circle"]
    settings = OptimizeSettings(
        iterations=12, lr=5.0, regularisation=0.01, grad_clip=0.1, num_steps=8, weights={"clip-toy": 100.0}
    )
    result = reno(adapter, prompts, [0, 1, 2], {"clip-toy": build_reward("clip-toy")}, settings)
    first, best = torch.tensor(result["history"][0]["total"]), result["reward"]
    room = first < 95.0  # an image already scoring 0.95+ (here "three green triangles", 0.956) may stay put
    assert room.sum() >= 2 and (best[room] > first[room] + 1.0).all(), (first, best)
    assert (best >= first).all()


def test_reno_optimises_each_image_as_if_alone_in_its_batch():
    # the gradient clip acts per image (ReNO's batch of one): a batch's result is each prompt's own run
    adapter = tiny_adapter("tiny:sd3")
    prompts, seeds = ["a red circle", "two blue squares", "a green triangle"], [0, 1, 2]
    settings = OptimizeSettings(iterations=3, lr=5.0, grad_clip=0.05, num_steps=4)
    together = reno(adapter, prompts, seeds, {"bright": Brightness()}, settings)
    for i in range(3):
        alone = reno(adapter, prompts[i : i + 1], seeds[i : i + 1], {"bright": Brightness()}, settings)
        assert torch.allclose(alone["noise"][0], together["noise"][i], atol=1e-5)
        assert alone["reward"][0] == pytest.approx(float(together["reward"][i]), abs=1e-3)


def test_reno_momentum_climbs_further_than_plain_steps_in_equal_iterations():
    # ReNO's optimiser is SGD with Nesterov momentum 0.9: with clipped gradients of a steady direction
    # the steps grow where plain SGD's stay at lr x clip
    adapter = tiny_adapter("tiny:sd3")
    prompts, seeds = ["a red circle", "two blue squares", "a green triangle"], [0, 1, 2]
    best = {}
    for momentum in (0.0, 0.9):
        settings = OptimizeSettings(iterations=4, lr=5.0, grad_clip=0.05, num_steps=4, momentum=momentum)
        result = reno(adapter, prompts, seeds, {"bright": Brightness()}, settings)
        start = torch.tensor(result["history"][0]["total"])
        best[momentum] = result["reward"] - start
    assert (best[0.9] > best[0.0]).all(), best
    with pytest.raises(ValueError, match="momentum must lie in"):
        reno(adapter, prompts, seeds, {"bright": Brightness()}, OptimizeSettings(iterations=1, momentum=1.0))


def test_per_sample_clip_by_hand():
    from align.optimize import clip_per_sample_

    grad = torch.tensor([[3.0, 4.0], [0.03, 0.04]])  # norms 5 and 0.05
    clip_per_sample_(grad, 1.0)
    assert torch.allclose(grad, torch.tensor([[0.6, 0.8], [0.03, 0.04]]))


def test_comparison_uses_equal_model_evaluations_and_never_scores_reno_below_its_start(tmp_path):
    from align.optimize import compare_with_best_of_n

    adapter = tiny_adapter("tiny:sd3")
    prompts, seeds = ["a red circle", "two blue squares"], [0, 1]
    settings = OptimizeSettings(iterations=3, lr=5.0, grad_clip=1.0, num_steps=4)
    compared = compare_with_best_of_n(adapter, prompts, seeds, {"bright": Brightness()}, settings)
    assert compared["best_of_n"] == 4  # the start and three steps: four decoded images per prompt
    assert set(compared["summaries"]) == {"base", "best_of_n", "optimized"}
    means = {m: s["rewards"]["bright"] for m, s in compared["summaries"].items()}
    assert means["optimized"] >= means["base"] - 1e-6 and means["best_of_n"] >= means["base"] - 1e-6
    assert torch.equal(compared["images"]["base"], adapter.generate(prompts, seeds, num_steps=4))


def test_the_cli_passes_its_settings_to_reno_and_reports_the_paired_difference(tmp_path, monkeypatch, capsys):
    import json

    import align.optimize
    from align.cli import main

    seen = {}
    real = align.optimize.reno

    def spy(adapter, prompts, seeds, rewards, settings, on_iteration=None):
        seen["settings"] = settings
        return real(adapter, prompts, seeds, rewards, settings, on_iteration=on_iteration)

    monkeypatch.setattr(align.optimize, "reno", spy)
    args = ["optimize", "toy", "--prompt", "a red circle", "--prompt", "two blue squares", "--seeds", "2"]
    args += ["--reward", "clip-toy", "--eval-reward", "geneval-toy", "--steps", "4", "--iterations", "2"]
    args += ["--grad-clip", "0.03", "--lr", "2.0", "--momentum", "0.5", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    assert (seen["settings"].grad_clip, seen["settings"].lr, seen["settings"].momentum) == (0.03, 2.0, 0.5)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    versus = summary["optimized"]["vs_baseline"]
    assert summary["settings"]["best_of_n"] == 3 and summary["optimized"]["num_images"] == 4
    for name in ("clip-toy", "geneval-toy"):  # the paired mean difference is the difference of the means
        difference = summary["optimized"]["rewards"][name] - summary["best_of_n"]["rewards"][name]
        assert versus[name][0] == pytest.approx(difference, abs=1e-6) and versus[name][1] >= 0
    assert "accuracy" in versus
    assert "(optimized - best_of_n, paired)" in capsys.readouterr().out


class SpreadingBrightness(Brightness):
    """Brightness whose 'members' disagree by the image's mean pixel value (the guard's input)."""

    def member_spread(self, images, prompts):
        return images.detach().mean(dim=(1, 2, 3))


def test_the_disagreement_guard_freezes_an_image_once_its_ensemble_disagrees_and_keeps_its_earlier_best():
    adapter = tiny_adapter("tiny:sd3")
    prompts = ["a red circle", "two blue squares"]
    rewards = {"bright": SpreadingBrightness()}
    free = reno(adapter, prompts, [0, 1], rewards, OptimizeSettings(iterations=6, lr=5.0, grad_clip=1.0, num_steps=4))
    start = torch.tensor(free["history"][0]["total"]) / 100  # the spread at iteration 0
    limit = float(start.max()) + 0.002  # exceeded after the first steps: brightness climbs
    guarded = reno(adapter, prompts, [0, 1], rewards,
                   OptimizeSettings(iterations=6, lr=5.0, grad_clip=1.0, num_steps=4, max_disagreement=limit))
    assert guarded["frozen"] == 2 and free["frozen"] == 0
    totals = torch.tensor([row["total"] for row in guarded["history"]])  # [I+1, B]
    moved = totals[1:] != totals[:-1]
    first_over = [int((totals[:, b] / 100 > limit).nonzero()[0]) for b in range(2)]
    for b, k in enumerate(first_over):
        assert not moved[k:, b].any()  # frozen: the same noise, the same image from then on
        assert guarded["reward"][b] <= totals[:k, b].max() + 1e-4 and guarded["reward"][b] < free["reward"][b]


def test_a_warm_start_is_best_of_ks_pick_and_counts_in_best_of_ns_budget():
    from align.optimize import compare_with_best_of_n

    adapter = tiny_adapter("tiny:sd3")
    prompts, seeds = ["a red circle", "two blue squares", "a green triangle"], [0, 1, 2]
    rewards = {"bright": Brightness()}
    warm = OptimizeSettings(iterations=0, num_steps=4, warm_start=5)
    picked = best_of_n(adapter, prompts, seeds, rewards, warm, n=5)
    start = reno(adapter, prompts, seeds, rewards, warm)
    assert torch.allclose(start["reward"], picked["reward"], atol=1e-4)  # the start is best-of-5's image
    assert torch.allclose(start["images"], picked["images"], atol=1e-5)
    cold = reno(adapter, prompts, seeds, rewards, OptimizeSettings(iterations=0, num_steps=4))
    assert (start["reward"] >= cold["reward"] - 1e-4).all() and (start["reward"] > cold["reward"] + 0.01).any()
    compared = compare_with_best_of_n(adapter, prompts, seeds, rewards, OptimizeSettings(iterations=2, lr=5.0, num_steps=4, warm_start=5))
    assert compared["best_of_n"] == 7  # five candidates and two steps
    with pytest.raises(ValueError, match="explore and warm_start"):
        compare_with_best_of_n(adapter, prompts, seeds, rewards, OptimizeSettings(iterations=4, explore=2, warm_start=3))


class Darkness(Brightness):
    def score(self, images, prompts):
        return 100 * (1 - images.mean(dim=(1, 2, 3)))


def test_the_trade_guard_keeps_no_iterate_that_lowered_a_term():
    """Brightness at weight 2 against darkness at 1: the total climbs by trading darkness for brightness;
    with the guard, no kept image is darker-scored than the start, so the start is kept."""
    adapter = tiny_adapter("tiny:sd3")
    prompts, seeds = ["a red circle", "two blue squares"], [0, 1]
    rewards = {"bright": Brightness(), "dark": Darkness()}
    settings = dict(iterations=4, lr=5.0, grad_clip=1.0, num_steps=4, weights={"bright": 2.0, "dark": 1.0})
    free = reno(adapter, prompts, seeds, rewards, OptimizeSettings(**settings))
    guarded = reno(adapter, prompts, seeds, rewards, OptimizeSettings(**settings, no_trade=True))
    start = torch.tensor(free["history"][0]["total"])
    assert (free["reward"] > start + 0.1).all()  # the unguarded run trades
    assert torch.allclose(guarded["reward"], start, atol=1e-4)  # every iterate lowered darkness


def test_optimize_passes_reward_args_from_the_command_line_and_the_recipe(tmp_path, capsys):
    import json

    import yaml

    from align.cli import main
    from rewards.proxy import ProxyNet, save_proxies

    save_proxies(tmp_path / "proxy", [ProxyNet(width=8), ProxyNet(width=8)], {"arch": {"width": 8}, "members": [{}, {}]})
    recipe = tmp_path / "guard.yaml"
    recipe.write_text(yaml.safe_dump({"model": "toy", "rewards": {"proxy": 1.0}, "iterations": 1, "steps": 3,
                                      "reward_args": {"proxy": {"path": str(tmp_path / "proxy"), "mode": "worst"}},
                                      "max_disagreement": 0.5, "warm_start": 2, "no_trade": True}))
    args = ["optimize", "--config", str(recipe), "--prompt", "a red circle", "--out", str(tmp_path / "r")]
    assert main([*args, "--reward-arg", "proxy.members=[1]"]) == 0
    settings = json.loads((tmp_path / "r" / "summary.json").read_text())["settings"]
    assert settings["reward_args"] == {"proxy": {"path": str(tmp_path / "proxy"), "mode": "worst", "members": [1]}}
    assert (settings["max_disagreement"], settings["warm_start"], settings["no_trade"], settings["best_of_n"]) == (0.5, 2, True, 3)
    recipe.write_text(yaml.safe_dump({"model": "toy", "rewards": {"proxy": 1.0}, "reward_args": {"clip-toy": {"x": 1}}}))
    assert main(["optimize", "--config", str(recipe), "--out", str(tmp_path / "s")]) == 2
    assert "reward_args.clip-toy: give {key: value} for a reward the recipe names" in capsys.readouterr().err
    assert main(["optimize", "toy", "--reward", "proxy", "--reward-arg", "path", "--out", str(tmp_path / "t")]) == 2
    assert "expected NAME.KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["reno", "guidance"])
def test_noise_optimisation_and_reward_guidance_run_on_a_video_model(tmp_path, capsys, method):
    """ReNO and reward-gradient guidance (Euphonium's process-reward guidance is its video form) step a
    video model's clips with a differentiable video reward; the clips are kept as looping GIFs."""
    import json

    from PIL import Image

    from align.cli import main

    out = tmp_path / method
    args = ["optimize", "tiny:wan", "--method", method, "--prompt", "a red circle moving left slowly"]
    args += ["--reward", "temporal-consistency", "--eval-reward", "geneval-toy-video", "--iterations", "2"]
    assert main([*args, "--steps", "3", "--seeds", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    methods = ["base", "best_of_n", "optimized"] if method == "reno" else ["base", "sde", "guided"]
    assert all("temporal-consistency" in summary[m]["rewards"] for m in methods)
    clips = sorted((out / "images").rglob("*.gif"))
    assert len(clips) == 3 and all(Image.open(c).n_frames == 9 for c in clips)


class LeftColumn(Reward):
    """100 x the mean of the image's first pixel column: a reward one shift of the image undoes."""

    differentiable = True

    def score(self, images, prompts):
        return 100 * images[..., 0].mean(dim=(1, 2))


def test_shifted_copies_are_the_image_then_whole_pixel_moves_of_it():
    from align.optimize import shifted_copies

    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6).requires_grad_(True)
    copies = shifted_copies(images, 4, 2, torch.Generator().manual_seed(0))
    assert copies.shape == (8, 3, 6, 6) and torch.equal(copies[:2], images)
    padded = torch.nn.functional.pad(images.detach(), (2, 2, 2, 2), mode="replicate")
    for k in range(1, 4):  # each copy is one window of the replicated-edge padding, the same for the batch
        windows = [(t, s) for t in range(5) for s in range(5)
                   if torch.equal(copies[2 * k : 2 * k + 2], padded[..., t : t + 6, s : s + 6])]
        assert windows
    copies.sum().backward()
    assert images.grad.abs().sum() > 0


def test_the_augmentation_guard_climbs_each_rewards_mean_over_the_shifted_copies(tmp_path):
    from align.cli import main
    from align.optimize import augmented_reward, shifted_copies

    prompts = ["a red circle", "two blue squares"]
    images = torch.rand(2, 3, 16, 16)
    settings = OptimizeSettings(augment=3, augment_shift=2, weights={"col": 2.0})
    total, values = augmented_reward({"col": LeftColumn()}, settings, images, prompts, torch.Generator().manual_seed(0))
    copies = shifted_copies(images, 3, 2, torch.Generator().manual_seed(0))
    expected = LeftColumn()(copies, prompts * 3).view(3, 2).mean(0)
    assert torch.allclose(values["col"], expected) and torch.allclose(total, 2 * expected)
    plain = augmented_reward({"col": LeftColumn()}, OptimizeSettings(), images, prompts, None)[0]
    assert torch.allclose(plain, LeftColumn()(images, prompts))  # augment 0: the reward as it is

    adapter = tiny_adapter("tiny:sd3")
    guarded = reno(adapter, prompts, [0, 1], {"col": LeftColumn()},
                   OptimizeSettings(iterations=3, lr=5.0, grad_clip=1.0, num_steps=4, augment=4))
    start = torch.tensor(guarded["history"][0]["total"])
    assert (guarded["reward"] > start).all()  # it climbs the shift-averaged objective
    assert main(["optimize", "toy", "--reward", "clip-toy", "--iterations", "1", "--steps", "3", "--augment", "3",
                 "--augment-shift", "1", "--prompt", "a red circle", "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["settings"]["augment"] == 3
