"""The one training loop on a tiny model: it learns, resumes exactly, distributes, saves usable LoRA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.checkpoint import load_state
from align.config import config_from_data
from align.loop import plan_epoch, train
from align.runs import checkpoints
from rewards.base import REWARDS, Reward, register_reward


class Brightness(Reward):
    """Mean pixel value: smooth, dense and easy to move, so a few epochs show learning."""

    differentiable = True

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


if "test-brightness" not in REWARDS:
    register_reward("test-brightness", differentiable=True, weights="none", description="test")(Brightness)


def tiny_config(**train):
    return config_from_data(
        {
            "model": {"name": "tiny:sd3"},
            "algorithm": {"name": "flow-grpo", "clip_range": 0.2, "beta": 0.01, "log_prob_reduction": "mean"},
            "rewards": {"terms": [{"name": "test-brightness"}], "normalise": "none"},
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


def test_short_run_learns_changes_every_parameter_and_starts_on_policy(tmp_path):
    from align.loop import Run

    config = tiny_config(num_epochs=6)
    run = Run(config, tmp_path / "probe")
    before = run.policy.trainable_state()
    del run
    train(config, tmp_path / "run")
    lines = metrics(tmp_path / "run")
    first = lines[0]
    assert first["ratio_mean"] == 1.0 and first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0
    assert first["clip_fraction"] == 0.0
    rewards = [line["rewards"]["test-brightness"]["mean"] for line in lines]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.005, rewards
    after = load_state(checkpoints(tmp_path / "run")[-1])["trainable"]
    assert before.keys() == after.keys() and len(before) > 0
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, unchanged[:3]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"base", "aligned"} <= summary.keys() and "accuracy" in summary["aligned"]


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    config = tiny_config(num_epochs=4)
    train(config, tmp_path / "whole")
    train(config, tmp_path / "split", stop_after=2)
    assert [p.name for p in checkpoints(tmp_path / "split")][-1] == "epoch-000002"
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
    assert torch.equal(whole["rng"]["torch"], split["rng"]["torch"])
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
        pipeline.load_lora_weights(str(lora))
    assert not [
        r for r in caplog.records if "unexpected" in r.message.lower() or "missing" in r.message.lower()
    ]
    after = pipeline("a red circle", generator=generators_from_seeds([0]), **kwargs).images
    assert (after - before).abs().max() > 1e-4


def test_two_processes_match_one_process(tmp_path):
    config_file = tmp_path / "exp.yaml"
    import yaml

    from align.config import config_to_data

    data = config_to_data(tiny_config(num_epochs=2, batch_size=8))
    data["algorithm"] = {"name": "flow-grpo", "clip_range": 0.2, "beta": 0.0}
    config_file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
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
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
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
    a = load_state(checkpoints(tmp_path / "one")[-1])["trainable"]
    b = load_state(checkpoints(tmp_path / "two")[-1])["trainable"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    scale = max(float(a[k].abs().max()) for k in a)
    assert worst < 1e-4 * max(1.0, scale), worst
    assert metrics(tmp_path / "one")[0]["rewards"] == pytest.approx(
        metrics(tmp_path / "two")[0]["rewards"], rel=1e-4
    )
