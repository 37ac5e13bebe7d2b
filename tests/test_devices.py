"""Devices, precision and attention: one resolution for every command, and an xformers that cannot take
a program down (an install built for another torch imports fine and fails on first use)."""

import importlib.machinery
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import samplers.devices
from align.cli import main
from samplers.attention import xformers_problem
from samplers.devices import Hardware, resolve_device, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["tiny:sd15", "tiny:sdxl", "tiny:sd3", "tiny:flux", "toy"]


def machine(monkeypatch, **offers):
    """This machine as one that offers `offers` (Hardware's fields), whatever it has."""
    monkeypatch.setattr(
        samplers.devices, "hardware", lambda: Hardware(**{"cuda_devices": 0, "mps": False, **offers})
    )


@pytest.fixture
def no_gpu(monkeypatch):
    machine(monkeypatch)


def test_auto_picks_cuda_then_mps_then_cpu(no_gpu, monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")
    machine(monkeypatch, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    machine(monkeypatch, mps=True, cuda_devices=2)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"only 2 CUDA GPU\(s\) are visible \(cuda:0..1\)"):
        resolve_device("cuda:2")


def test_the_machine_is_asked_of_torch_once_in_one_place():
    real = samplers.devices.hardware()
    assert real.cuda_devices == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert real.mps == torch.backends.mps.is_available()


def test_unavailable_or_unknown_devices_are_named(no_gpu):
    with pytest.raises(ValueError, match="'cuda': no CUDA GPU is visible here"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'mps': Apple MPS is not available"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_dtype_is_bfloat16_on_cuda_and_float32_elsewhere(monkeypatch):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    machine(monkeypatch, cuda_devices=1, cuda_bf16=True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    machine(monkeypatch, cuda_devices=1, cuda_bf16=False)
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        resolve_dtype("float64", torch.device("cpu"))


COMMANDS = {
    "doctor": ["doctor", "tiny:sd3"],
    "evaluate": ["evaluate", "toy"],
    "optimize": ["optimize", "toy", "--reward", "clip-toy", "--out", "{out}"],
    "gallery": ["gallery", "--model", "toy", "--out", "{out}"],
    "pairs": ["pairs", "toy", "--reward", "geneval-toy", "--out", "{out}"],
    "train": ["train", str(ROOT / "configs/toy/grpo-demo.yaml"), "--out", "{out}"],
    "demo": ["demo", "--out", "{out}"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_gpu_is_one_line_and_exit_2_before_anything_is_written(command, no_gpu, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(out=out) for a in COMMANDS[command]] + ["--device", "cuda"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: device 'cuda': no CUDA GPU is visible here; use --device auto or cpu"
    assert not out.exists()


class Loaded(Exception):
    """Raised by a fake load_adapter, carrying what the command asked for."""


@pytest.mark.parametrize("command", ["doctor", "evaluate", "optimize", "gallery", "pairs"])
def test_commands_load_the_model_on_the_device_and_dtype_asked_for(command, monkeypatch, tmp_path):
    import samplers.models

    def fake_load_adapter(name, **kwargs):
        raise Loaded(kwargs)

    monkeypatch.setattr(samplers.models, "load_adapter", fake_load_adapter)
    argv = [a.format(out=tmp_path / "out") for a in COMMANDS[command]]
    with pytest.raises(Loaded) as loaded:
        main([*argv, "--device", "cpu", "--dtype", "bfloat16"])
    assert resolve_device(loaded.value.args[0]["device"]) == torch.device("cpu")
    assert loaded.value.args[0]["dtype"] == "bfloat16"


def test_demo_runs_reno_on_the_training_device_and_dtype(monkeypatch, tmp_path):
    import align.loop
    import samplers.models
    from align.demo import run_demo

    trained = []

    def fake_accelerator(mixed_precision, device):
        return types.SimpleNamespace(device=resolve_device(device))

    def fake_train(config, out, accelerator=None, **kwargs):
        trained.append((accelerator.device, config.model.dtype))
        return {"base": {}, "aligned": {}}

    def fake_load_adapter(name, **kwargs):
        raise Loaded(kwargs)

    monkeypatch.setattr(align.loop, "make_accelerator", fake_accelerator)
    monkeypatch.setattr(align.loop, "train", fake_train)
    monkeypatch.setattr(samplers.models, "load_adapter", fake_load_adapter)
    with pytest.raises(Loaded) as loaded:
        run_demo(tmp_path / "demo", device="cpu", dtype="bfloat16")
    assert trained == [(torch.device("cpu"), "bfloat16")] * 2  # Flow-GRPO, then DiffusionNFT
    assert loaded.value.args[0] == {"device": torch.device("cpu"), "dtype": "bfloat16"}


def broken_xformers(monkeypatch, *, ops_work: bool):
    """An importable xformers (not installed here: a module of our own in sys.modules) whose ops fail as
    an install built for another torch does (ops_work=False), or whose ops work while diffusers refuses to
    switch to it (ops_work=True; our seam samplers.attention.switch_to_xformers raises as diffusers would).
    Returns the shapes of the op's calls (the probe's)."""
    import samplers.attention

    calls = []

    def memory_efficient_attention(q, k, v, *args, **kwargs):
        calls.append(tuple(q.shape))
        if not ops_work:
            raise NotImplementedError("xformers extensions were built for another torch and do not load")
        attention = torch.nn.functional.scaled_dot_product_attention
        return attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    def refuse(model):
        raise NotImplementedError("diffusers: xformers memory efficient attention is not available")

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    for module in (package, ops):  # importable as an installed package is (a spec, no distribution metadata)
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(samplers.attention, "switch_to_xformers", refuse)
    return calls


@pytest.mark.parametrize("ops_work", [False, True], ids=["ops-fail", "diffusers-refuses"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_broken_xformers_leaves_every_family_on_sdpa(name, ops_work, monkeypatch):
    from samplers.models import load_adapter

    calls = broken_xformers(monkeypatch, ops_work=ops_work)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = load_adapter(name, attention="auto")
        assert default.attention == "sdpa" and calls == []  # auto never tries xformers
        asked = load_adapter(name, attention="xformers")
    assert calls == [(1, 16, 2, 32)]  # the probe ran once, on the denoiser whose attention was asked for
    messages = [str(w.message) for w in caught if "xformers" in str(w.message)]
    assert asked.attention == "sdpa" and asked.describe()["attention"] == "sdpa"
    assert len(messages) == 1 and "NotImplementedError" in messages[0] and "using PyTorch SDPA" in messages[0]
    images = asked.generate(["a red circle"], [0], num_steps=2)
    assert images.shape[1] == 3 and bool(torch.isfinite(images).all())
    torch.testing.assert_close(images, default.generate(["a red circle"], [0], num_steps=2), rtol=0, atol=0)


def test_the_probe_names_the_cause(monkeypatch):
    calls = broken_xformers(monkeypatch, ops_work=False)
    problem = xformers_problem(torch.device("cpu"), torch.float32)
    assert problem == "NotImplementedError: xformers extensions were built for another torch and do not load"
    assert calls == [(1, 16, 2, 32)]
    monkeypatch.setitem(sys.modules, "xformers", None)  # not installed
    assert xformers_problem(torch.device("cpu"), torch.float32).startswith("ModuleNotFoundError")


def test_gpu_check_prints_its_plan_without_a_gpu():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for row in (
        "doctor tiny:sd15",
        "xformers vs SDPA",
        "8192 tokens",
        "compile",
        "rollout",
        "demo --grpo-only",
    ):
        assert row in result.stdout


@pytest.mark.cuda
def test_auto_is_cuda_in_bfloat16_and_doctor_passes_there():
    from align.doctor import run_checks
    from samplers.models import load_adapter

    adapter = load_adapter("tiny:sd3", device="auto")
    assert adapter.device.type == "cuda" and adapter.dtype in (torch.bfloat16, torch.float16)
    assert all(check.passed for check in run_checks(adapter, num_steps=4))


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["tiny:sd15", "tiny:sd3"])
def test_xformers_where_it_runs_matches_sdpa(name):
    from samplers.models import load_adapter

    problem = xformers_problem(torch.device("cuda"), torch.bfloat16)
    if problem is not None:
        pytest.skip(f"xformers cannot run here: {problem}")
    sdpa = load_adapter(name, device="cuda", dtype="bfloat16", attention="sdpa")
    xformers = load_adapter(name, device="cuda", dtype="bfloat16", attention="xformers")
    assert xformers.attention == "xformers"
    prompts, seeds = ["a red circle", "two blue squares"], [0, 1]
    difference = xformers.generate(prompts, seeds, num_steps=4) - sdpa.generate(prompts, seeds, num_steps=4)
    assert float(difference.abs().max()) < 0.05
