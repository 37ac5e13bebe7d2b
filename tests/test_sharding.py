"""FSDP2 on two CPU processes (gloo): the sharded run trains as one process does, its checkpoints hold
every process's shards and resume on any number of processes, and its LoRA loads into a pipeline."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pattern_reward  # noqa: F401  (registers test-pattern)
import pytest
import torch
import yaml
from conftest import free_port, tiny_adapter
from safetensors.torch import load_file
from test_loop import metrics, stable, tiny_config

from align.config import config_to_data
from align.runs import checkpoints
from align.sharding import wrap_units

ROOT = Path(__file__).parent.parent
LORA_FILE = Path("lora") / "pytorch_lora_weights.safetensors"
MODEL_FILE = Path("model") / "diffusion_pytorch_model.safetensors"


def test_wrap_units_are_the_repeated_blocks():
    sd3 = tiny_adapter("tiny:sd3").model
    assert wrap_units(sd3) == list(sd3.transformer_blocks)
    flux = tiny_adapter("tiny:flux").model
    assert wrap_units(flux) == [*flux.transformer_blocks, *flux.single_transformer_blocks]
    unet = tiny_adapter("tiny:sd15").model
    mid = unet.mid_block  # not a ModuleList: its attention and resnet lists' elements are units
    assert wrap_units(unet) == [*unet.down_blocks, *unet.up_blocks, *mid.attentions, *mid.resnets]


def _env():
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "ALIGN_PLUGINS": "pattern_reward",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }


def _command(config_file: Path, out: Path, *args: str, processes: int = 1) -> list[str]:
    """`align train` in one process, or launched on `processes` by accelerate with the FSDP config."""
    train = ["-m", "align.cli", "train", str(config_file), *args, "--out", str(out)]
    if processes == 1:
        return [sys.executable, *train]
    launch = [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "2cpu-fsdp.yaml"),
    ]
    return [
        sys.executable,
        *launch,
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        *train,
    ]


def _train(config_file: Path, out: Path, *args: str, processes: int = 1) -> None:
    done = subprocess.run(
        _command(config_file, out, *args, processes=processes),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _config_file(tmp_path: Path, **train) -> Path:
    data = config_to_data(tiny_config(**train))
    beta = 0.01 if train.get("trainable", "lora") == "lora" else 0.0  # full: no reference policy
    data["algorithm"] = {"name": "flow-grpo", "clip_range": 0.2, "beta": beta, "log_prob_reduction": "mean"}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _weights(run: Path, name: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoints(run)[-1] / name))


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b) and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < atol, worst


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_two_sharded_processes_train_as_one_process_does(tmp_path, trainable):
    """The same global batch (2 x 4 samples against 1 x 8): the same sampled rewards and, after two
    epochs, the same weights up to float rounding (the gradients are summed in another order; AdamW
    turns a rounding-sized gradient into a step near lr, so the bound scales with lr: at 3e-2 both
    this and DDP's 2-process run differ from one process by 8e-5-9e-5, at 3e-3 by 5e-6)."""
    config_file = _config_file(
        tmp_path, num_epochs=2, batch_size=4, micro_batch_size=4, trainable=trainable, lr=1e-3
    )
    _train(config_file, tmp_path / "one", "train.batch_size=8", "train.sharding=none")
    offload = ["train.fsdp_offload=true"] if trainable == "full" else []  # the same numbers, on a CPU
    _train(config_file, tmp_path / "two", *offload, processes=2)
    assert [m["processes"] for m in metrics(tmp_path / "two")] == [2, 2]
    name = LORA_FILE if trainable == "lora" else MODEL_FILE
    _assert_close(_weights(tmp_path / "one", name), _weights(tmp_path / "two", name), atol=1e-5)
    for first, second in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        assert first["rewards"]["test-pattern"] == pytest.approx(second["rewards"]["test-pattern"], rel=1e-5)
    shards = checkpoints(tmp_path / "two")[-1] / "sharded"
    assert (shards / ".metadata").is_file() and len(list(shards.glob("*.distcp"))) == 2  # one file a process
    if trainable == "lora":  # the sharded run's export loads into a plain pipeline as the other's does
        images = [_pipeline_image(checkpoints(tmp_path / run)[-1] / "lora") for run in ("one", "two")]
        images.append(_pipeline_image(None))
        assert (images[0] - images[1]).abs().max() < 1e-4
        assert (images[0] - images[2]).abs().max() > 1e-3  # the LoRA changed the pipeline's image


def _pipeline_image(lora: Path | None) -> torch.Tensor:
    """The tiny SD3 pipeline's image for one prompt and seed, with `lora` loaded (or none)."""
    from samplers.noise import generators_from_seeds
    from samplers.tiny import build_sd3

    pipeline = build_sd3()
    pipeline.set_progress_bar_config(disable=True)
    if lora is not None:
        pipeline.load_lora_weights(str(lora), adapter_name="run")
    kwargs = dict(num_inference_steps=4, height=32, width=32, max_sequence_length=16, output_type="pt")
    return pipeline("a red circle", generator=generators_from_seeds([0]), guidance_scale=7.0, **kwargs).images


def test_a_rank_killed_mid_epoch_stops_the_run_which_resumes_exactly_on_two_processes_and_on_one(tmp_path):
    """kill -9 of rank 1 after it sampled epoch 2: the launch ends (the survivor does not hang), the
    epoch-1 checkpoint holds both processes' shards, and resumed on two processes the run ends
    bit-equal to an uninterrupted one; one process resumes it too (resharded)."""
    config_file = _config_file(tmp_path, num_epochs=3, batch_size=4, micro_batch_size=2, ema_decay=0.5)
    _train(config_file, tmp_path / "whole", processes=2)
    cut = tmp_path / "cut"
    started = time.monotonic()
    killed = subprocess.run(
        _command(config_file, cut, processes=2),
        env={**_env(), "ALIGN_TEST_KILL_AT": "sampled:2@1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode != 0 and time.monotonic() - started < 120, killed.stderr[-2000:]
    assert [checkpoint.name for checkpoint in checkpoints(cut)] == ["epoch-000001"]
    _train(config_file, cut, "--resume", str(cut), processes=2)
    uninterrupted, resumed = metrics(tmp_path / "whole"), metrics(cut)
    assert [stable(m) for m in resumed] == [stable(m) for m in uninterrupted]
    for name in (LORA_FILE, Path("sharded") / "__0_0.distcp", Path("sharded") / "__1_0.distcp"):
        whole, again = checkpoints(tmp_path / "whole")[-1] / name, checkpoints(cut)[-1] / name
        assert whole.read_bytes() == again.read_bytes(), name
    single = tmp_path / "single"  # the 2-process checkpoint after epoch 1, resumed by one process
    _train(
        config_file,
        single,
        "train.sharding=fsdp2",
        "train.batch_size=8",
        "--resume",
        str(checkpoints(cut)[0]),
    )
    assert [(m["epoch"], m["processes"]) for m in metrics(single)] == [(2, 1), (3, 1)]


def test_one_process_writes_the_sharded_format_resumes_it_exactly_and_refuses_the_other_setting(tmp_path):
    """train.sharding=fsdp2 with one process (no process group): the same files, so a run saved on
    one process resumes on two and the reverse; resumed with the other setting, a one-line error."""
    import dataclasses

    from align.loop import train

    config = tiny_config(num_epochs=2, sharding="fsdp2")
    train(config, tmp_path / "whole")
    train(config, tmp_path / "cut", stop_after=1)
    assert (checkpoints(tmp_path / "cut")[0] / "sharded" / ".metadata").is_file()
    train(config, tmp_path / "cut", resume=tmp_path / "cut")
    assert [stable(m) for m in metrics(tmp_path / "cut")] == [stable(m) for m in metrics(tmp_path / "whole")]
    a, b = _weights(tmp_path / "whole", LORA_FILE), _weights(tmp_path / "cut", LORA_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)
    replicated = dataclasses.replace(config, train=dataclasses.replace(config.train, sharding="none"))
    with pytest.raises(
        ValueError, match="saved with train.sharding=fsdp2; resume it with train.sharding=fsdp2"
    ):
        train(replicated, tmp_path / "other", resume=checkpoints(tmp_path / "cut")[0])


def test_text_runs_refuse_sharding_with_the_fix():
    from align.config import config_from_data
    from align.loop import Run

    data = config_to_data(tiny_config())
    data["model"] = {"name": "tiny:llama"}
    data["algorithm"] = {"name": "text-grpo"}
    data["rewards"] = {"terms": [{"name": "text-format", "args": {"pattern": "yes"}}]}
    data["train"].update(sharding="fsdp2", prompts="arithmetic:train")
    data["eval"] = {"prompts": "arithmetic:heldout", "max_prompts": 2}
    with pytest.raises(
        ValueError, match="is for image models; text-grpo replicates .* set train.sharding=none"
    ):
        Run(config_from_data(data), Path("unused"))
