"""Over-optimisation on the toy world: proxy rewards fitted to gold labels, the KL from the base, the
curves and their summary, and the monitors that flag (and may stop) a run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from align.cli import main
from align.config import config_from_data
from align.goodhart import curves, goodhart, path_kl
from align.monitoring import Monitors
from gallery.plots import plot_overoptimisation, read_evaluations
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


def test_monitors_flag_above_below_and_a_rise_over_the_first_epochs():
    settings = config_from_data({"algorithm": {"name": "flow-grpo"}, "monitor": {"flags": [
        {"monitor": "saturation", "above": 0.9}, {"monitor": "diversity", "below": 0.1},
        {"monitor": "grid_energy", "rise": 2.0, "window": 2}]}}).monitor
    monitors = Monitors(settings, {})
    noisy = torch.full((4, 3, 32, 32), 0.5) + 0.1 * torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    values = monitors.measure(noisy, ["x"] * 4)
    assert set(values) >= {"saturation", "diversity", "grid_energy"} and len(monitors.history["grid_energy"]) == 1
    assert monitors.raised(values) == ["diversity below 0.1"]
    monitors.history = {"saturation": [0.5, 0.95], "diversity": [0.2, 0.2], "grid_energy": [1.0, 1.0]}
    assert monitors.raised(values) == ["saturation above 0.9"]  # a rise needs more than its window
    monitors.history = {"saturation": [0.5] * 4, "diversity": [0.2] * 4, "grid_energy": [1.0, 1.0, 1.0, 2.6]}
    assert monitors.raised(values) == []  # the last two average 1.8 against the first two's 1.0
    monitors.history["grid_energy"] = [1.0, 1.0, 2.0, 4.0]  # 3.0 against 1.0: rise 2.0 flags it
    assert monitors.raised(values) == ["grid_energy rose 3.00x (flag at 2.0x)"]
    again = Monitors(settings, {})
    again.load_state_dict(monitors.state_dict())
    assert again.history == monitors.history and again.raised(values) == monitors.raised(values)
    with pytest.raises(ValueError, match="no monitor 'nope' is measured"):
        Monitors(config_from_data({"algorithm": {"name": "flow-grpo"}, "monitor": {"flags": [
            {"monitor": "nope", "above": 1}]}}).monitor, {}).raised(values)


def test_a_malformed_flag_is_a_config_error(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"algorithm": {"name": "flow-grpo"}, "monitor": {"flags": [{"monitor": "x", "above": 1, "below": 0}]}}))
    assert main(["config", str(path)]) == 2
    assert "monitor.flags: entry 0: expected {monitor: NAME, one of above / below / rise: VALUE, window: EPOCHS}" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"algorithm": {"name": "flow-grpo"}, "monitor": {"flags": [{"monitor": "x", "rise": 1.5, "window": 0}]}}))
    assert main(["config", str(path)]) == 2
    assert "monitor.flags: entry 0: window must be a whole number of epochs >= 1, got 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_proxy(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxies") / "n24"
    args = ["reward-model", "train", "--out", str(out), "--samples", "24", "--members", "3", "--epochs", "2"]
    assert main([*args, "--steps", "4", "--width", "8"]) == 0
    return out


QUICK = ["train.num_epochs=1", "train.batch_size=16", "train.micro_batch_size=16", "train.group_size=8",
         "sampling.num_steps=4", "sampling.eval_num_steps=4", "eval.max_prompts=2", "eval.seeds=1"]
RECIPES = sorted(p.name for p in (SHIPPED / "toy").glob("overopt-*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_align_train_runs_every_overoptimisation_recipe(tmp_path, small_proxy, recipe):
    """Each shipped over-optimisation recipe trains an epoch on a small proxy and records its KL."""
    out = tmp_path / "run"
    path = f"rewards.terms.0.args.path={small_proxy}"
    assert main(["train", str(SHIPPED / "toy" / recipe), path, *QUICK, "--out", str(out), "--device", "cpu"]) == 0
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["skipped_steps"] == 0 and "proxy/disagreement" in record["monitors"]
    assert record["eval"]["kl"] > 0 and len(record["eval"]["outcomes"]) == 2
    rows = read_evaluations(out)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[0]["kl"] == 0.0


def test_a_flag_with_stop_ends_the_run_evaluated_and_checkpointed_and_a_resume_adds_nothing(
    tmp_path, small_proxy, capsys
):
    out = tmp_path / "run"
    recipe = str(SHIPPED / "toy" / "overopt-proxy.yaml")
    flags = ["monitor.flags=[{monitor: saturation, above: 0.0}]", "monitor.stop=true", "train.num_epochs=3"]
    overrides = [f"rewards.terms.0.args.path={small_proxy}", *QUICK[1:], "eval.kl_seeds=0", *flags]
    assert main(["train", recipe, *overrides, "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"]["epoch"] == 1 and summary["stopped"]["flags"][0].startswith("saturation above 0.0")
    assert summary["aligned"]["epoch"] == 1 and "kl" not in summary["aligned"]
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("stopped at epoch 1: saturation above 0.0") for line in printed)
    assert json.loads(printed[-1]).keys() == {"base", "aligned"}  # the stop is a line of its own, not a null
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert main(["train", recipe, *overrides, "--out", str(out), "--resume", str(out), "--device", "cpu"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_align_curves_prints_the_summary_and_the_gallery_draws_the_plot(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = _rows([0.5, 0.75, 0.5], [0.6, 0.7, 0.8], flags=(2,))
    (run / "summary.json").write_text(json.dumps({"base": rows[0]}))
    records = [{"epoch": r["epoch"], "eval": r, "monitor_flags": r["monitor_flags"]} for r in rows[1:]]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["curves", f"unshaped={run}", "--proxy", "proxy", "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert '"gold_peak": 0.75' in out and '"first_flag_epoch": 10' in out and "-0.250±" in out
    # a flag between evaluations (epoch 7, not evaluated) is the first flag, not the next evaluated one
    records.insert(1, {"epoch": 7, "monitor_flags": ["saturation rose 1.2x"]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["curves", str(run), "--proxy", "proxy"]) == 0
    assert '"first_flag_epoch": 7' in capsys.readouterr().out
    assert (tmp_path / "c.png").stat().st_size > 10_000
    assert main(["curves", str(run), "--proxy", "clip"]) == 2
    assert plot_overoptimisation({"x": run}, tmp_path / "d.png") is not None


def test_best_of_n_keeps_the_proxys_choice_among_more_candidates(tmp_path, small_proxy, capsys):
    from align.goodhart import best_of_n_curve, best_of_n_kl
    from align.runs import load_model
    from rewards.scoring import score_images

    assert best_of_n_kl(1) == 0 and best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    adapter = load_model("toy", device="cpu", dtype="float32", default_steps=4)
    prompts = ["a red circle", "two blue squares", "a green triangle above a yellow square"]
    proxy = build_reward("proxy", path=str(small_proxy))
    rows = best_of_n_curve(adapter, prompts, 1, proxy, [1, 2, 4])
    first = score_images(adapter.generate(prompts, [0, 0, 0]), prompts)["checks"]  # n = 1: seed s itself
    assert rows[0]["accuracy"] == pytest.approx(sum(c["all"] for c in first) / 3) and rows[0]["kl"] == 0
    assert rows[0]["proxy"] <= rows[1]["proxy"] <= rows[2]["proxy"]
    args = ["reward-model", "best-of-n", "--proxy", str(small_proxy), "--max-prompts", "2", "--seeds", "1"]
    assert main([*args, "--n", "1", "2", "--steps", "4", "--out", str(tmp_path / "bon.json")]) == 0
    assert [r["n"] for r in json.loads((tmp_path / "bon.json").read_text())["rows"]] == [1, 2]
    assert main([*args, "--n", "0"]) == 2
