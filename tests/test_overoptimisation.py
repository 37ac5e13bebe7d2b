"""Over-optimisation on the toy world: proxy rewards fitted to gold labels, the KL from the base, the
curves and their summary, and the monitors that flag (and may stop) a run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from align.cli import main
from align.config import config_from_data
from align.goodhart import curves, goodhart, path_kl
from align.monitoring import Monitors
from rewards.base import build_reward
from rewards.proxy import ProxyNet, correlation, fit_proxy, save_proxies, word_ids

SHIPPED = Path(__file__).parents[1] / "configs"


def test_word_ids_are_stable_and_keep_the_order_of_words():
    a, b = word_ids(["a red circle left of a blue square", "a blue circle left of a red square"], 512, 12)
    assert a.tolist() == word_ids(["a red circle left of a blue square"], 512, 12)[0].tolist()
    assert sorted(a.tolist()) == sorted(b.tolist()) and a.tolist() != b.tolist()
    assert a[8:].tolist() == [0, 0, 0, 0] and int(a.min()) == 0 and int(a.max()) <= 512


def _colour_task(count: int, seed: int):
    """Images whose target is the mean of the channel the prompt names: learnable only with the prompt."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(count, 3, generator=generator)
    images = (colours[:, :, None, None] + 0.1 * torch.randn(count, 3, 32, 32, generator=generator)).clamp(0, 1)
    channels = torch.randint(0, 3, (count,), generator=generator)
    prompts = [["a red thing", "a green thing", "a blue thing"][int(c)] for c in channels]
    return images, prompts, colours[torch.arange(count), channels]


def test_a_proxy_fits_a_prompt_conditioned_target_and_round_trips_through_its_files(tmp_path):
    images, prompts, targets = _colour_task(384, 0)
    validation = _colour_task(128, 1)
    net, fit = fit_proxy(images, prompts, targets, validation, epochs=40, lr=5e-3, arch={"width": 8})
    assert fit["validation_correlation"] > 0.95 and fit["train_mse"] < fit["validation_mse"] * 2
    other, _ = fit_proxy(images, prompts, targets, validation, epochs=5, seed=1, arch={"width": 8})
    save_proxies(tmp_path, [net, other], {"arch": {"width": 8}, "members": [{}, {}]})
    values = validation[0][:8], validation[1][:8]
    with torch.no_grad():
        first, second = (torch.sigmoid(n.logits(*values)) for n in (net, other))
    assert torch.allclose(build_reward("proxy", path=str(tmp_path), members=[0])(*values), first, atol=1e-6)
    mean = build_reward("proxy", path=str(tmp_path))
    assert torch.allclose(mean(*values), (first + second) / 2, atol=1e-6)
    worst = build_reward("proxy", path=str(tmp_path), mode="worst")(*values)
    assert torch.allclose(worst, torch.minimum(first, second), atol=1e-6)
    spread = float(((first - second).abs() / 2).mean())  # the std of two values is half their gap
    assert mean.disagreement(*values) == pytest.approx(spread, abs=1e-6) and spread > 0
    assert build_reward("proxy", path=str(tmp_path), members=[1]).disagreement(*values) == pytest.approx(spread, abs=1e-6)
    pixels = values[0].clone().requires_grad_(True)
    mean(pixels, values[1]).sum().backward()  # differentiable: reward backprop and ReNO can push on it
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0


def test_proxy_reward_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="align reward-model train --out"):
        build_reward("proxy", path=str(tmp_path))
    save_proxies(tmp_path, [ProxyNet(width=8)], {"arch": {"width": 8}, "members": [{}]})
    with pytest.raises(ValueError, match=r"members \[3\] must name some of its 1 members 0..0"):
        build_reward("proxy", path=str(tmp_path), members=[3])


def test_correlation():
    a, b = torch.tensor([1.0, 2, 3, 5]), torch.tensor([2.0, 4, 6.5, 1])
    assert correlation(a, b) == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-12)
    assert correlation(torch.ones(3), torch.tensor([1.0, 2, 3])) == 0.0


def test_align_reward_model_train_labels_toy_samples_and_writes_an_ensemble(tmp_path, capsys):
    out = tmp_path / "proxy"
    args = ["reward-model", "train", "--out", str(out), "--samples", "24", "--members", "2", "--epochs", "2"]
    assert main([*args, "--steps", "4", "--width", "8"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 24 and manifest["validation_samples"] == 5 and len(manifest["members"]) == 2
    assert manifest["gold"] == "geneval-toy" and 0 <= manifest["gold_mean"] <= 1
    assert {p.name for p in out.iterdir()} == {"manifest.json", "member-0.safetensors", "member-1.safetensors"}
    assert "2 proxy member(s) of geneval-toy on 24 samples" in capsys.readouterr().out
    assert main([*args, "--steps", "4"]) == 2  # never written over
    assert "is not empty" in capsys.readouterr().err
    assert main(["reward-model", "train", "--out", str(tmp_path / "x"), "--validation", "1.5"]) == 2


@pytest.fixture(scope="module")
def toy_policy():
    from align.config import LoraSettings
    from align.policy import ImagePolicy
    from align.runs import load_model

    adapter = load_model("toy", device="cpu", dtype="float32")
    return adapter, ImagePolicy(adapter, "lora", LoraSettings(rank=4, alpha=4))


def test_path_kl_is_zero_at_the_base_and_grows_with_the_lora(toy_policy):
    adapter, policy = toy_policy
    prompts = ["a red circle", "two blue squares"]
    assert path_kl(adapter, policy, prompts, 2, 3, 0.7) == (0.0, 0.0)  # LoRA B = 0: the base itself
    saved = policy.trainable_state()
    try:
        sizes = []
        for scale in (1e-3, 2e-3):
            generator = torch.Generator().manual_seed(0)
            policy.load_trainable_state({k: scale * torch.randn(v.shape, generator=generator) for k, v in saved.items()})
            sizes.append(path_kl(adapter, policy, prompts, 2, 3, 0.7)[0])
    finally:
        policy.load_trainable_state(saved)
    # both LoRA factors scale: the mean's change is ~ scale^2 and the KL ~ scale^4
    assert sizes[0] > 0 and 8 < sizes[1] / sizes[0] < 24


def _rows(accuracies, proxies, flags=()):
    """Evaluations of 8 images each whose outcomes give the accuracies exactly."""
    rows = []
    for epoch, (accuracy, proxy) in enumerate(zip(accuracies, proxies)):
        hits = round(accuracy * 8)
        outcomes = [1] * hits + [0] * (8 - hits)
        flagged = ["proxy/disagreement rose"] if epoch in flags else []
        rows.append({"epoch": epoch * 5, "accuracy": accuracy, "accuracy_se": 0.1, "outcomes": outcomes,
                     "rewards": {"proxy": proxy}, "kl": float(epoch), "monitor_flags": flagged})
    return rows


def test_goodhart_reads_the_peak_the_fall_and_the_first_flag():
    rows = _rows([0.5, 0.75, 0.875, 0.625, 0.5], [0.6, 0.7, 0.8, 0.85, 0.9], flags=(3,))
    summary = goodhart(rows, "proxy")
    assert summary["gold_peak"] == 0.875 and summary["peak_epoch"] == 10 and summary["gold_final"] == 0.5
    assert summary["final_from_peak"] == pytest.approx(-0.375) and summary["first_fall_epoch"] == 15
    assert summary["first_flag_epoch"] == 15 and summary["proxy_last"] - summary["proxy_first"] == pytest.approx(0.3)
    points = curves(rows)
    assert "from_peak" not in points[0] and points[2]["from_peak"] == pytest.approx(0.125)
    assert points[4]["sqrt_kl"] == 2.0 and points[4]["from_peak"] == pytest.approx(-0.375)
    # the paired SE of [-1]*3 + [0]*5 (what fell from the peak's outcomes)
    assert points[4]["from_peak_se"] == pytest.approx(float(torch.tensor([-1.0] * 3 + [0] * 5).std() / 8**0.5))


def test_monitors_flag_above_below_and_a_rise_over_the_first_epoch():
    settings = config_from_data({"algorithm": {"name": "flow-grpo"}, "monitor": {"flags": [
        {"monitor": "saturation", "above": 0.9}, {"monitor": "diversity", "below": 0.1},
        {"monitor": "grid_energy", "rise": 2.0}]}}).monitor
    monitors = Monitors(settings, {})
    flat = torch.full((4, 3, 32, 32), 0.5)
    values = monitors.measure(flat + 0.1 * torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), ["x"] * 4)
    assert monitors.raised(values) == ["diversity below 0.1"]
    raised = monitors.raised(values | {"saturation": 0.95, "diversity": 0.2, "grid_energy": 3 * values["grid_energy"]})
    assert raised[0] == "saturation above 0.9" and raised[1].startswith("grid_energy rose 3.00x")
    state = monitors.state_dict()
    again = Monitors(settings, {})
    again.load_state_dict(state)
    assert again.first == monitors.first
    with pytest.raises(ValueError, match="no monitor 'nope' is measured"):
        Monitors(config_from_data({"algorithm": {"name": "flow-grpo"}, "monitor": {"flags": [
            {"monitor": "nope", "above": 1}]}}).monitor, {}).raised(values)


def test_a_malformed_flag_is_a_config_error(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"algorithm": {"name": "flow-grpo"}, "monitor": {"flags": [{"monitor": "x", "above": 1, "below": 0}]}}))
    assert main(["config", str(path)]) == 2
    assert "monitor.flags: entry 0: expected {monitor: NAME, and one of above / below / rise: VALUE}" in capsys.readouterr().err
