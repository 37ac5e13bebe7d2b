"""The one training loop on a tiny model: it learns, resumes exactly, distributes, saves usable LoRA."""

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pattern_reward  # noqa: F401  (registers test-pattern)
import pytest
import torch
from conftest import free_port

from align.checkpoint import load_state
from align.config import config_from_data, config_to_data
from align.loop import Run, plan_epoch, train
from align.optimisation import adamw
from align.runs import checkpoints


def tiny_config(**train):
    return config_from_data(
        {
            "model": {"name": "tiny:sd3"},
            "algorithm": {"name": "flow-grpo", "clip_range": 0.2, "beta": 0.01, "log_prob_reduction": "mean"},
            "rewards": {"terms": [{"name": "test-pattern"}], "normalise": "none"},
            "sampling": {"num_steps": 4, "noise_level": 0.8, "eval_num_steps": 4},
            "lora": {"rank": 4, "alpha": 4},
            "train": {
                "batch_size": 8,
                "group_size": 4,
                "micro_batch_size": 4,
                "num_epochs": 3,
                "lr": 3e-2,
                "checkpoint_every": 1,
                "keep_checkpoints": 5,
                "prompts": "train",
                **train,
            },
            "eval": {"prompts": "heldout", "max_prompts": 2, "seeds": 1},
            "logging": {"tensorboard": False, "progress": False},
        }
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def stable(record: dict) -> dict:
    """A metrics line without its wall-clock fields."""
    return {k: v for k, v in record.items() if not k.startswith("time") and k != "samples_per_second"}


def test_epoch_plan_keeps_groups_whole_and_seeds_layout_free():
    config = tiny_config(batch_size=8, group_size=4)
    one = plan_epoch(["a", "b", "c"], config, epoch=3, process=0, processes=2)
    two = plan_epoch(["a", "b", "c"], config, epoch=3, process=1, processes=2)
    assert one.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and two.group_ids.tolist() == [
        2,
        2,
        2,
        2,
        3,
        3,
        3,
        3,
    ]
    assert len(set(one.prompts[:4])) == 1  # a group is one prompt
    single = plan_epoch(
        ["a", "b", "c"], tiny_config(batch_size=16, group_size=4), epoch=3, process=0, processes=1
    )
    assert single.prompts == one.prompts + two.prompts and single.seeds == one.seeds + two.seeds


def test_short_run_changes_every_parameter_and_starts_on_policy(tmp_path):
    from align.loop import Run

    # Re-scoring in the sampling batch's composition (one micro-batch of the whole batch) gives ratio 1
    # exactly (DESIGN invariant 3); smaller micro-batches change float rounding only, as the doctor's
    # batch-composition check bounds it (1e-6).
    config = tiny_config(num_epochs=3, micro_batch_size=8)
    before = Run(config, tmp_path / "probe").policy.trainable_state()
    train(config, tmp_path / "run")
    first = metrics(tmp_path / "run")[0]
    assert first["ratio_mean"] == 1.0 and first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0
    assert first["clip_fraction"] == 0.0
    train(tiny_config(num_epochs=1, micro_batch_size=4), tmp_path / "micro")
    first = metrics(tmp_path / "micro")[0]
    assert abs(first["ratio_min"] - 1) < 1e-6 and abs(first["ratio_max"] - 1) < 1e-6
    after = load_state(checkpoints(tmp_path / "run")[-1])["trainable"]
    assert before.keys() == after.keys() and len(before) > 0
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, unchanged[:3]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"base", "aligned"} <= summary.keys() and "accuracy" in summary["aligned"]


def test_policy_gradient_updates_raise_the_log_probs_of_advantaged_samples(tmp_path):
    """On the tiny model's collected batch, a few PPO updates move each sample's log-probability in
    the direction of its advantage (the surrogate's promise, measured, not assumed)."""
    from align.loop import Run

    run = Run(tiny_config(batch_size=16, micro_batch_size=8, lr=1e-3), tmp_path)
    plan = plan_epoch(run.prompts, run.config, 0, 0, 1)
    batch = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)
    steps = batch.steps

    def log_probs():
        with torch.no_grad():
            return sum(
                run.adapter.rescore(batch.trajectory, steps[:, k]).log_prob for k in range(steps.shape[1])
            )

    before = log_probs()
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        units = run.algorithm.micro_batches(batch, generator)
        for unit in units:
            (run.algorithm.loss(batch, unit)[0] / len(units)).backward()
        run.optimizer.step()
        run.optimizer.zero_grad()
    change = log_probs() - before
    correlation = float(torch.corrcoef(torch.stack([batch.advantages, change]))[0, 1])
    assert correlation > 0.3, correlation


def test_grpo_pieces_converge_on_a_velocity_bias_policy():
    """rollout -> group advantages -> re-score -> PPO loss, end to end on a policy whose velocity is a
    learnable bias b: x_0 = x_1 - b under the ODE, so the reward -(x_0 - 0.5)^2 peaks at b = -0.5."""
    from align.losses import group_advantages, ppo_clip_loss
    from samplers.flow import flow_step
    from samplers.rollout import rescore, rollout
    from samplers.types import Schedule

    torch.manual_seed(0)
    dims, batch, group = 16, 32, 8
    bias = torch.zeros(dims, requires_grad=True)
    optimizer = torch.optim.Adam([bias], lr=0.05)
    sigmas = torch.linspace(1, 0, 5)
    schedule = Schedule(sigmas[:-1] * 1000, sigmas)

    def denoiser(x, t, cond):
        return bias.expand_as(x)

    rewards = []
    for _ in range(40):
        with torch.no_grad():
            trajectory = rollout(
                denoiser,
                flow_step,
                schedule,
                torch.randn(batch, dims),
                {},
                prompts=["p"] * batch,
                noise_levels=0.8,
            )
        reward = -((trajectory.final - 0.5) ** 2).mean(1)
        rewards.append(float(reward.mean()))
        advantages, _ = group_advantages(reward, torch.arange(batch) // group)
        optimizer.zero_grad()
        for step in range(4):
            out = rescore(denoiser, flow_step, trajectory, step)
            loss, _ = ppo_clip_loss(
                out.log_prob / dims, trajectory.log_probs[:, step] / dims, advantages, 0.2
            )
            (loss / 4).backward()
        optimizer.step()
    assert sum(rewards[-10:]) / 10 > sum(rewards[:5]) / 5 + 0.15, rewards
    assert float(bias.detach().mean()) == pytest.approx(-0.5, abs=0.25)


def assert_same_rng(a: dict, b: dict) -> None:
    """Every saved random stream equal: torch's, python's and numpy's."""
    assert torch.equal(a["torch"], b["torch"])
    assert (a["python_version"], a["python"], a["python_gauss"]) == (
        b["python_version"],
        b["python"],
        b["python_gauss"],
    )
    assert torch.equal(a["numpy"]["keys"], b["numpy"]["keys"])
    assert {k: v for k, v in a["numpy"].items() if k != "keys"} == {
        k: v for k, v in b["numpy"].items() if k != "keys"
    }


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    config = config_from_data(
        config_to_data(tiny_config(num_epochs=4)) | {"rewards": {"terms": [{"name": "test-drawing-pattern"}]}}
    )  # a reward that draws from python's and numpy's streams: resuming them wrong changes the run
    train(config, tmp_path / "whole")
    train(config, tmp_path / "split", stop_after=2)
    assert [p.name for p in checkpoints(tmp_path / "split")][-1] == "epoch-000002"
    random.random(), np.random.rand()  # the process's streams move on, as a restarted process's would differ
    train(config, tmp_path / "split", resume=tmp_path / "split")
    whole = load_state(checkpoints(tmp_path / "whole")[-1])
    split = load_state(checkpoints(tmp_path / "split")[-1])
    for name, tensor in whole["trainable"].items():
        assert torch.equal(tensor, split["trainable"][name]), name
    for key, state in whole["optimizer"]["state"].items():
        for slot, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(split["optimizer"]["state"][key][slot])
            )
    assert_same_rng(whole["rng"], split["rng"])
    assert [stable(m) for m in metrics(tmp_path / "whole")] == [
        stable(m) for m in metrics(tmp_path / "split")
    ]


def test_missing_resume_path_and_reused_run_directory_are_errors(tmp_path):
    config = tiny_config(num_epochs=1)
    with pytest.raises(ValueError, match="neither a run directory"):
        train(config, tmp_path / "new", resume=tmp_path / "nowhere")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        train(config, tmp_path / "used")


def test_saved_lora_loads_into_a_plain_pipeline_and_changes_it(tmp_path, caplog):
    from samplers.noise import generators_from_seeds
    from samplers.tiny import build_sd3

    train(tiny_config(num_epochs=2), tmp_path / "run")
    lora = checkpoints(tmp_path / "run")[-1] / "lora"
    pipeline = build_sd3()
    pipeline.set_progress_bar_config(disable=True)
    kwargs = dict(
        num_inference_steps=4,
        guidance_scale=7.0,
        height=32,
        width=32,
        max_sequence_length=16,
        output_type="pt",
    )
    before = pipeline("a red circle", generator=generators_from_seeds([0]), **kwargs).images
    with caplog.at_level("WARNING"):
        pipeline.load_lora_weights(str(lora), adapter_name="run")
    # peft reports keys it could not place as "unexpected keys" / "missing keys"; diffusers' note that
    # the text encoders got no LoRA is expected (only the transformer is trained).
    assert not [r for r in caplog.records if re.search(r"(unexpected|missing)[_ ]keys", r.message.lower())]
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = {
        k.removeprefix("transformer."): v
        for k, v in load_file(str(lora / "pytorch_lora_weights.safetensors")).items()
    }
    loaded = get_peft_model_state_dict(pipeline.transformer, adapter_name="run")
    assert set(loaded) == set(saved) and len(saved) > 0
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    after = pipeline("a red circle", generator=generators_from_seeds([0]), **kwargs).images
    assert (after - before).abs().max() > 1e-4
    from align.runs import load_model

    adapter = load_model(str(tmp_path / "run"))  # a run directory is a model: base + its LoRA
    assert adapter.name == str(tmp_path / "run") and adapter.dtype == torch.float32


def test_two_processes_match_one_process(tmp_path):
    config_file = tmp_path / "exp.yaml"
    import yaml

    from align.config import config_to_data

    data = config_to_data(tiny_config(num_epochs=2, batch_size=8))
    data["algorithm"] = {"name": "flow-grpo", "clip_range": 0.2, "beta": 0.0}
    config_file.write_text(yaml.safe_dump(data))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "ALIGN_PLUGINS": "pattern_reward",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "align.cli",
            "train",
            str(config_file),
            "train.batch_size=16",
            "--out",
            str(tmp_path / "one"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(Path(__file__).parent.parent / "configs" / "accelerate" / "2cpu.yaml"),
            "--main_process_port",
            str(free_port()),
            "-m",
            "align.cli",
            "train",
            str(config_file),
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert [m["processes"] for m in metrics(tmp_path / "two")] == [2, 2]  # really two processes
    a = load_state(checkpoints(tmp_path / "one")[-1])["trainable"]
    b = load_state(checkpoints(tmp_path / "two")[-1])["trainable"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    scale = max(float(a[k].abs().max()) for k in a)
    assert worst < 1e-4 * max(1.0, scale), worst
    for first, second in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        assert first["rewards"]["test-pattern"] == pytest.approx(second["rewards"]["test-pattern"], rel=1e-4)
        # the monitors are the processes' mean (equal halves: a per-pixel mean is the whole batch's), so
        # that every process raises the same flags and a monitor.stop ends them at the same epoch
        assert first["monitors"]["saturation"] == pytest.approx(second["monitors"]["saturation"], rel=1e-4)


def test_shared_initial_noise_gives_a_group_one_start_and_its_own_sde_draws(tmp_path):
    from align.loop import Run

    config = tiny_config(batch_size=8, group_size=4)
    config.algorithm.shared_initial_noise = True
    run = Run(config, tmp_path / "run")
    plan = plan_epoch(run.prompts, config, 0, 0, 1)
    batch = run.algorithm.collect(0, plan.prompts, plan.group_ids, plan.seeds)
    start, end = batch.trajectory.latents[:, 0], batch.trajectory.latents[:, -1]
    assert torch.equal(start[0], start[3]) and torch.equal(start[4], start[7])
    assert not torch.equal(start[0], start[4])
    assert (end[0] - end[1]).abs().max() > 1e-3  # the SDE spreads the group


def test_several_optimiser_steps_per_pass_leave_the_first_on_policy_and_move_the_ratio(tmp_path):
    train(tiny_config(num_epochs=1, steps_per_pass=2, micro_batch_size=8), tmp_path / "run")
    (record,) = metrics(tmp_path / "run")
    assert record["step"] == 2  # two optimiser steps in the one epoch
    # the first step re-scores in the sampling composition (ratio exactly 1), the second sees moved weights
    assert max(1 - record["ratio_min"], record["ratio_max"] - 1) > 1e-4


def test_gradient_agreement_is_one_for_agreeing_units_and_about_zero_for_noise():
    from align.loop import GradientAgreement

    def agreement(unit_grads):
        param = torch.nn.Parameter(torch.zeros(len(unit_grads[0])))
        meter = GradientAgreement([param])
        for grad in unit_grads:  # what backward does: accumulate into .grad
            param.grad = grad.clone() if param.grad is None else param.grad + grad
            meter.add()
        return meter.value()

    g = torch.tensor([1.0, -2.0, 0.5])
    assert agreement([g, g, g]) == pytest.approx(1.0)
    assert agreement([g, -g]) == pytest.approx(-1.0)  # (0 - 2|g|^2) / (1 * 2|g|^2)
    noise = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
    assert abs(agreement(list(noise))) < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_agreement_matches_the_float64_formula_without_float64_gradients(dtype):
    """Noise plus a small shared direction: the value is small, so |G|^2 - sum |g_u|^2 cancels."""
    from align.loop import GradientAgreement

    generator = torch.Generator().manual_seed(1)
    shared = torch.randn(200_000, generator=generator) * 0.1
    param = torch.nn.Parameter(torch.zeros(200_000, dtype=dtype))
    meter = GradientAgreement([param])
    sums = []  # what .grad holds after each unit, in the gradients' dtype
    for _ in range(4):
        unit = (shared + torch.randn(200_000, generator=generator)).to(dtype)
        param.grad = unit.clone() if param.grad is None else param.grad + unit
        sums.append(param.grad.double())
        meter.add()
    units = [sums[0]] + [b - a for a, b in zip(sums, sums[1:])]  # exact in float64
    squares = sum(float(u.pow(2).sum()) for u in units)
    expected = (float(sums[-1].pow(2).sum()) - squares) / (3 * squares)
    assert 0.003 < expected < 0.03
    assert meter.value() == pytest.approx(expected, rel=1e-4)


def test_noise_levels_keep_the_last_flow_step_deterministic_and_windows_inside_the_live_steps():
    import random

    from align.algorithms.stochastic import SDEWindow, noise_levels

    sigmas = [1.0, 0.889, 0.778, 0.667, 0.556, 0.445, 0.334, 0.223, 0.112, 0.001, 0.0]  # the toy's 10 steps
    assert noise_levels(SDEWindow(), 0.7, sigmas, 0, random.Random(0)) == [0.7] * 9 + [0.0]
    window = SDEWindow(size=3)
    starts = set()
    for seed in range(50):
        levels = noise_levels(window, 0.7, sigmas, 0, random.Random(seed))
        stochastic = [i for i, level in enumerate(levels) if level > 0]
        assert len(stochastic) == 3 and stochastic == list(range(stochastic[0], stochastic[0] + 3))
        starts.add(stochastic[0])
    assert starts == set(range(7))  # windows start anywhere in 0..6 and never reach step 9


def test_policy_gradient_records_what_tells_signal_from_noise(tmp_path):
    train(tiny_config(num_epochs=1), tmp_path / "run")
    (record,) = metrics(tmp_path / "run")
    for key in ("grad_agreement", "reward_std_in_groups", "advantage_abs_mean", "zero_std_fraction"):
        assert key in record and math.isfinite(record[key]), key
    assert -1.0 <= record["grad_agreement"] <= 1.0


def epoch_lrs(settings) -> list[float]:
    """The lr of every epoch: the schedule stepped once per epoch, as the loop steps it; and the same
    schedule built at each epoch, as a resumed run builds it, must agree."""
    from align.loop import lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
    scheduler = lr_scheduler(optimizer, settings)
    stepped = []
    for _ in range(settings.num_epochs):
        stepped.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # the epoch's steps (no gradients here: nothing moves)
        scheduler.step()
    resumed = []
    for epoch in range(settings.num_epochs):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)  # a checkpoint's last lr
        lr_scheduler(optimizer, settings, epochs_done=epoch)
        resumed.append(optimizer.param_groups[0]["lr"])
    assert stepped == resumed
    return stepped


def test_epoch_lr_schedules():
    from align.config import TrainConfig

    constant = TrainConfig(lr=1e-3, num_epochs=10)
    assert epoch_lrs(constant) == [1e-3] * 10
    cosine = TrainConfig(lr=1e-3, num_epochs=11, lr_schedule="cosine", lr_final_fraction=0.1)
    values = epoch_lrs(cosine)
    assert (
        values[0] == pytest.approx(1e-3)
        and values[5] == pytest.approx(0.55e-3)
        and values[10] == pytest.approx(1e-4)
    )
    assert all(a > b for a, b in zip(values, values[1:]))  # falls every epoch
    warm = TrainConfig(lr=1e-3, num_epochs=12, lr_schedule="cosine", warmup_epochs=3)
    values = epoch_lrs(warm)
    assert values[:4] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert values[11] == pytest.approx(0.0, abs=1e-12)


def test_ema_moves_the_shadow_by_the_decay_rule_and_leaves_the_weights():
    from align.loop import EMA

    weights = {"w": torch.nn.Parameter(torch.zeros(3)), "b": torch.nn.Parameter(torch.ones(2))}
    ema = EMA(weights, 0.9)
    with torch.no_grad():
        weights["w"].fill_(1.0)
        weights["b"].fill_(3.0)
    ema.update(weights)
    ema.update(weights)
    assert torch.allclose(ema.shadow["w"], torch.full((3,), 1 - 0.9**2))  # 0 -> 1 at rate 1 - 0.9, twice
    assert torch.allclose(ema.shadow["b"], torch.full((2,), 3 - 2 * 0.9**2))
    assert torch.equal(weights["w"].detach(), torch.ones(3))


@pytest.mark.cuda
def test_an_ema_kept_on_the_cpu_averages_cuda_weights_and_stays_there_when_loaded():
    from align.loop import EMA

    weights = {"w": torch.nn.Parameter(torch.zeros(3, device="cuda"))}
    ema = EMA(weights, 0.9, "cpu")
    with torch.no_grad():
        weights["w"].fill_(1.0)
    ema.update(weights)
    assert ema.shadow["w"].device.type == "cpu" and torch.allclose(ema.shadow["w"], torch.full((3,), 0.1))
    ema.load({"w": torch.ones(3)})
    assert ema.shadow["w"].device.type == "cpu"
    beside = EMA(weights, 0.9)  # auto: beside the weights, also after loading a checkpoint's CPU tensors
    beside.load({"w": torch.ones(3)})
    assert beside.shadow["w"].device.type == "cuda"


def test_adamw_fuses_where_every_parameter_allows_and_takes_the_same_step():
    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn_like(w) for w in weights]
    stepped = []
    for make in (adamw, lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd)):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = make(params, 1e-2, 0.1)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        stepped.append((optimizer.defaults["fused"], [p.detach() for p in params]))
    (fused, ours), (plain, theirs) = stepped
    assert fused is True and not plain
    for a, b, w in zip(ours, theirs, weights):
        assert not torch.equal(a, w)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    double = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))  # outside the fused dtypes
    assert not adamw([double], 1e-3, 0.0).defaults["fused"]


def test_gradient_agreement_is_left_out_where_a_step_has_one_micro_batch(tmp_path, monkeypatch):
    """The agreement compares a step's micro-batch gradients: a step of one unit (here the sampling
    pass's own graph, trained whole) has none to compare, and no copy of the gradients is made."""
    import align.loop

    made = []

    class Counted(align.loop.GradientAgreement):
        def __init__(self, parameters):
            made.append(1)
            super().__init__(parameters)

    monkeypatch.setattr(align.loop, "GradientAgreement", Counted)
    config = tiny_config(num_epochs=1)
    config.algorithm.rollout_graph_mb = 1e6
    train(config, tmp_path / "run")
    assert made == []  # the copy of every trainable gradient was never taken
    (record,) = metrics(tmp_path / "run")
    assert record["rollout_graph"] == 1.0  # the one unit
    assert "grad_agreement" not in record and math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0


def test_the_nan_checks_gradient_norm_is_the_clips_one_pass_per_step(tmp_path, monkeypatch):
    """The NaN/inf check and the clip share one total-norm pass over the gradients, and the step is
    the one accelerate's own clip takes."""
    import torch.nn.utils.clip_grad as clip_grad

    import align.loop

    passes = []
    original = clip_grad._get_total_norm

    def counted(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)

    config = tiny_config(num_epochs=1, max_grad_norm=1e-3)  # small enough that every step clips
    with monkeypatch.context() as patch:
        patch.setattr(clip_grad, "_get_total_norm", counted)
        patch.setattr(torch.nn.utils, "get_total_norm", counted)
        shared = Run(config, tmp_path / "shared")
        record = shared.train_epoch()
    assert record["step"] >= 1 and len(passes) == record["step"]  # one pass per optimiser step
    assert record["grad_norm"] > 1e-3  # clipped
    with monkeypatch.context() as patch:
        patch.setattr(align.loop, "CLIP_WITH_NORM", False)  # as on torch < 2.6: accelerate clips
        patch.setattr(align.loop, "TOTAL_NORM", False)
        separate = Run(config, tmp_path / "separate")
        separate.train_epoch()
    for name, value in shared.policy.named_parameters().items():
        assert torch.equal(value, separate.policy.named_parameters()[name]), name


def test_adamw8bit_keeps_a_quarter_of_the_state_trains_and_resumes_exactly(tmp_path):
    """bitsandbytes' 8-bit AdamW (train.optimizer=adamw8bit), full fine-tuning of the tiny SD3: its
    moments take a byte an element where they are quantised (tensors of 4,096 elements or more), the
    run changes the weights and a resumed run ends bit-equal to an uninterrupted one."""
    from align.checkpoint import tensor_bytes

    def config(optimizer):
        data = config_to_data(tiny_config(num_epochs=2, trainable="full", optimizer=optimizer))
        data["algorithm"]["beta"] = 0.0  # full fine-tuning: no reference policy
        return config_from_data(data)

    states = {}
    for optimizer in ("adamw", "adamw8bit"):
        run = Run(config(optimizer), tmp_path / optimizer)
        run.train_epoch()
        inner = run.optimizer.optimizer  # accelerate's wrapper around it
        large = [p for p in run.policy.parameters() if p.numel() >= 4096]
        states[optimizer] = tensor_bytes([inner.state[p] for p in large])
        assert large and type(inner).__name__ == {"adamw": "AdamW", "adamw8bit": "AdamW8bit"}[optimizer]
    # 2 bytes an element, plus block scales and each tensor's two 256-entry maps, against 8: 0.30 here
    assert states["adamw8bit"] < 0.32 * states["adamw"], states
    train(config("adamw8bit"), tmp_path / "whole")
    train(config("adamw8bit"), tmp_path / "cut", stop_after=1)
    train(config("adamw8bit"), tmp_path / "cut", resume=tmp_path / "cut")
    assert [stable(m) for m in metrics(tmp_path / "cut")] == [stable(m) for m in metrics(tmp_path / "whole")]
    a = load_state(checkpoints(tmp_path / "whole")[-1])["trainable"]
    b = load_state(checkpoints(tmp_path / "cut")[-1])["trainable"]
    first = load_state(checkpoints(tmp_path / "whole")[0])["trainable"]
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], first[k]) for k in a)
