"""DiffusionNFT and AWM: their losses against the formulas on hand-made tensors, the limits where they
become plain flow matching, and the old policy DiffusionNFT keeps."""

import math
from pathlib import Path

import pytest
import torch

from align.config import load_config
from align.loop import Run, plan_epoch
from align.losses import awm_loss, matching_error, nft_loss

TINY = Path(__file__).parents[1] / "configs" / "tiny"


def tensors(seed=0, batch=3, shape=(2, 2)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, *shape), generator=g) for _ in range(3)]


def test_matching_error_by_hand():
    prediction = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    assert matching_error(prediction, target).tolist() == [2.5, 1.0]  # (1 + 4) / 2, (1 + 1) / 2
    # adaptive: over the mean |error| (1.5 and 1.0)
    assert torch.allclose(matching_error(prediction, target, adaptive=True), torch.tensor([2.5 / 1.5, 1.0]))


def test_nft_loss_is_its_formula():
    prediction, old, target = tensors()
    r = torch.tensor([1.0, 0.25, 0.0])
    beta = 0.5
    loss, stats = nft_loss(prediction, old, target, r, beta, adaptive=False)
    positive = 0.5 * old + 0.5 * prediction
    negative = 1.5 * old - 0.5 * prediction
    e_pos = ((positive - target) ** 2).flatten(1).mean(1)
    e_neg = ((negative - target) ** 2).flatten(1).mean(1)
    expected = (r * e_pos + (1 - r) * e_neg).mean() / beta
    assert torch.allclose(loss, expected)
    assert stats["positive_error"] == pytest.approx(float(e_pos.mean()))


def test_nft_in_clean_space_with_the_adaptive_weight():
    prediction, old, target = tensors(1)
    noised, sigma = torch.randn(3, 2, 2), torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1)

    def to_clean(v):
        return noised - sigma * v

    r = torch.tensor([0.9, 0.5, 0.1])
    loss, _ = nft_loss(prediction, old, target, r, 1.0, to_clean=to_clean, adaptive=True)
    clean_target = to_clean(target)
    e_pos = matching_error(to_clean(prediction), clean_target, adaptive=True)
    e_neg = matching_error(to_clean(2 * old - prediction), clean_target, adaptive=True)
    assert torch.allclose(loss, (r * e_pos + (1 - r) * e_neg).mean())


def test_nft_at_beta_one_and_optimality_one_is_flow_matching():
    prediction, old, target = tensors(2)
    loss, _ = nft_loss(prediction, old, target, torch.ones(3), 1.0, adaptive=False)
    assert torch.allclose(loss, ((prediction - target) ** 2).mean())


def test_nft_as_beta_vanishes_its_gradient_is_2r_minus_1_times_flow_matchings():
    prediction, _, target = tensors(3)
    r = torch.tensor([1.0, 0.5, 0.1])
    prediction.requires_grad_(True)
    loss, _ = nft_loss(prediction, prediction.detach().clone(), target, r, 1e-4, adaptive=False)
    (gradient,) = torch.autograd.grad(loss, prediction)
    plain = torch.func.grad(lambda p: ((p - target) ** 2).flatten(1).mean(1).sum() / 3)(prediction.detach())
    expected = (2 * r - 1).view(3, 1, 1) * plain
    assert torch.allclose(gradient, expected, atol=1e-4)
    assert gradient[1].abs().max() < 1e-4  # r = 1/2: neither positive nor negative, no pull


def test_awm_loss_is_its_formula_and_equal_advantages_give_flow_matching():
    prediction, _, target = tensors(4)
    advantages = torch.tensor([1.5, -0.5, 0.0])
    weights = torch.tensor([0.3, 0.6, 0.9])
    loss, stats = awm_loss(prediction, target, advantages, weights)
    errors = ((prediction - target) ** 2).flatten(1).mean(1)
    assert torch.allclose(loss, (advantages * weights * errors).mean())
    plain, _ = awm_loss(prediction, target, torch.ones(3))
    assert torch.allclose(plain, ((prediction - target) ** 2).mean())
    assert stats["matching_error"] == pytest.approx(float(errors.mean()))


def test_awm_clipped_ratio_stops_the_gradient_beyond_the_clip():
    target = torch.zeros(2, 1)
    prediction = torch.tensor([[1.0], [1.0]], requires_grad=True)  # error 1 each
    old_errors = torch.tensor([1.5, 1.0])  # sample 0 already improved: ratio exp(0.5) = 1.65
    advantages = torch.tensor([1.0, 1.0])
    loss, stats = awm_loss(prediction, target, advantages, old_errors=old_errors, clip_range=0.2)
    ratio = torch.exp(torch.tensor([0.5, 0.0]))
    expected = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)).mean()
    assert torch.allclose(loss, expected)
    (gradient,) = torch.autograd.grad(loss, prediction)
    assert gradient[0].item() == 0.0  # clipped: a positive sample that gained enough stops pulling
    assert gradient[1].item() == pytest.approx(2 * 1.0 / 2)  # d/dv of A * (v - 0)^2 / 2 rows
    assert stats["clip_fraction"] == 0.5


def tiny_run(tmp_path, name, *overrides):
    return Run(load_config(TINY / f"{name}.yaml", list(overrides)), tmp_path / name)


def test_nft_old_policy_starts_on_policy_and_follows_by_its_ema(tmp_path):
    run = tiny_run(tmp_path, "diffusion-nft", "algorithm.old_decay_rate=0.25")
    algorithm, policy = run.algorithm, run.policy
    plan = plan_epoch(run.prompts, run.config, 0, 0, 1)
    batch = algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)
    # epoch 0: the old policy is the current one, so its predictions are the trained model's
    rows = torch.arange(len(batch.prompts))
    with torch.no_grad():
        output = algorithm.predict(batch, rows, 0)[0]
    assert torch.allclose(output, batch.old[:, 0], atol=1e-6)
    old = {k: v.clone() for k, v in algorithm.old_state.items()}
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    current = policy.trainable_state()
    algorithm.collect(2, plan.prompts, plan.group_ids, plan.seeds)  # decay min(0.5, 2 x 0.25) = 0.5
    for name, value in algorithm.old_state.items():
        assert torch.allclose(value, 0.5 * old[name] + 0.5 * current[name])
    assert all(torch.equal(current[n], p) for n, p in policy.named_parameters().items())  # swapped back


def test_forward_process_configs_refuse_what_they_cannot_run(tmp_path):
    from align.schema import ConfigError

    with pytest.raises(ConfigError, match="time_range"):
        load_config(TINY / "awm.yaml", ["algorithm.time_range=[0.5, 0.2]"])
    with pytest.raises(ValueError, match="group_size >= 2"):
        tiny_run(tmp_path, "awm", "train.group_size=1", "train.batch_size=4")


def test_ratio_norm_shift_is_the_mean_log_ratio_of_each_step_by_hand():
    from align.losses import ratio_norm_shift

    log_ratio = torch.tensor([-0.3, -0.1, 0.2, -0.5])
    steps = torch.tensor([2, 0, 2, 0])
    assert torch.allclose(ratio_norm_shift(log_ratio, steps), torch.tensor([-0.05, -0.3, -0.05, -0.3]))


def test_step_weights_even_out_the_log_prob_gradient_across_flow_steps():
    """The gradient of a flow SDE step's log-prob in the velocity, at the same unit noise, grows as the
    noise vanishes; times GRPO-Guard's weight it is the same at every step."""
    from align.losses import step_gradient_weights
    from samplers.flow import flow_step

    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.1, 0.0])
    levels = torch.tensor([0.7, 0.7, 0.7, 0.7, 0.0])
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    norms, stds, coefficients = [], [], []
    for i in range(4):
        v = torch.zeros(1, 16, requires_grad=True)
        x = torch.ones(1, 16)
        out = flow_step(v, x, sigmas[i], sigmas[i + 1], noise_level=float(levels[i]))
        prev = (out.mean + out.std.view(-1, 1) * z).detach()
        step = flow_step(v, x, sigmas[i], sigmas[i + 1], noise_level=float(levels[i]), prev=prev)
        (gradient,) = torch.autograd.grad(step.log_prob.sum(), v)
        norms.append(float(gradient.norm()))
        stds.append(float(out.std))
        one = flow_step(torch.ones(1, 16), x, sigmas[i], sigmas[i + 1], noise_level=float(levels[i]), prev=prev)
        coefficients.append(float((one.mean - step.mean.detach())[0, 0]))
    assert max(norms) / min(norms) > 2  # unweighted: the low-noise steps pull hardest
    live = torch.tensor([True] * 4 + [False])
    weights = step_gradient_weights(torch.tensor(stds + [0.0]), torch.tensor(coefficients + [1.0]), live)
    weighted = [n * float(w) for n, w in zip(norms, weights)]
    assert max(weighted) / min(weighted) == pytest.approx(1.0, abs=1e-4)
    assert float(weights[:4].mean()) == pytest.approx(1.0) and float(weights[4]) == 0.0


def test_flow_grpo_with_grpo_guard_and_cps_trains_an_epoch(tmp_path):
    run = tiny_run(
        tmp_path, "flow-grpo", "algorithm.guard.ratio_norm=true", "algorithm.guard.step_reweight=true",
        "sampling.sde=cps", "train.steps_per_pass=2", "train.micro_batch_size=2",
    )
    assert run.adapter.sde == "cps"
    record = run.train_epoch()
    assert record["skipped_steps"] == 0 and "raw_ratio_mean" in record


def test_dgpo_loss_by_hand_and_its_start_is_awms_direction():
    from align.losses import dgpo_loss

    errors = torch.tensor([0.5, 0.7, 0.2, 0.4], requires_grad=True)
    reference = torch.tensor([0.6, 0.6, 0.3, 0.3])
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    groups = torch.tensor([0, 0, 3, 3])
    loss, stats = dgpo_loss(errors, reference, advantages, groups, beta=10.0)
    z0 = 10.0 * (1.0 * -0.1 + -1.0 * 0.1) / 2  # -1: the group prefers its better sample already
    z1 = 10.0 * (0.5 * -0.1 + -0.5 * 0.1) / 2  # -0.5
    expected = -(torch.nn.functional.logsigmoid(-torch.tensor([z0, z1]))).mean()
    assert torch.allclose(loss, expected)
    assert stats["group_accuracy"] == 1.0
    at_start, _ = dgpo_loss(reference.clone().requires_grad_(True), reference, advantages, groups, 10.0)
    assert float(at_start) == pytest.approx(math.log(2))
    start = reference.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(dgpo_loss(start, reference, advantages, groups, 10.0)[0], start)
    assert torch.allclose(gradient, 10.0 / (2 * 2) * advantages / 2)  # beta / (2 |g|) A, mean over 2 groups


def test_dgpo_units_hold_whole_groups_with_one_shared_noise(tmp_path):
    run = tiny_run(tmp_path, "dgpo")
    plan = plan_epoch(run.prompts, run.config, 0, 0, 1)
    batch = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)
    units = run.algorithm.micro_batches(batch, torch.Generator().manual_seed(0))
    assert len(units) == 2 * 2  # 2 draws x 2 groups of 4 (micro-batch 4)
    for rows, draw in units:
        assert len(batch.group_ids[rows].unique()) == 1 and len(rows) == 4
        assert torch.equal(batch.noise[rows, draw], batch.noise[rows[:1], draw].expand_as(batch.noise[rows, draw]))


def test_the_frontier_benchmark_keeps_a_snapshot_per_budget_and_prints_its_tables(tmp_path, capsys):
    import importlib.util
    import json

    path = Path(__file__).parents[1] / "benchmarks" / "frontier.py"
    spec = importlib.util.spec_from_file_location("frontier", path)
    frontier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frontier)
    case = f"nft@0.01,0.02={TINY / 'diffusion-nft.yaml'} eval.rewards=[]"
    argv = ["--out", str(tmp_path), "--case", case, "--prompts", "train", "--max-prompts", "2", "--seeds", "1"]
    assert frontier.main(argv) == 0
    saved = json.loads((tmp_path / "frontier.json").read_text())
    assert [(r["split"], r["budget"]) for r in saved["rows"]] == [
        ("train", 0.01), ("train", 0.02), ("novel", 0.01), ("novel", 0.02)
    ]
    assert all(r["epochs"] >= 1 and r["seconds"] >= r["budget"] for r in saved["rows"])
    assert frontier.main(["--out", str(tmp_path), "--tables"]) == 0
    tables = capsys.readouterr().out
    assert "| nft | train | 0 (" in tables and "| train gain (quality change), novel gain |" in tables
