"""`align plan`: the meta-device trace against the high-water mark a real run reaches on this CPU, the
published architectures of the shipped large models, and the advice it gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align.memory import LiveBytes, fused_attention_on_meta


@pytest.mark.parametrize("name", ["tiny:sd3 LoRA, KL", "tiny:sd3 full", "toy LoRA, checkpointed"])
def test_the_plan_is_within_a_fifth_of_the_peak_a_run_reaches(name, monkeypatch):
    """The plan, traced on the meta device, against the high-water mark of tensor memory of the same
    recipe's second epoch, measured on the CPU (what torch.cuda.max_memory_allocated counts on a GPU):
    LoRA, full fine-tuning and gradient checkpointing, three rows of benchmarks/plan_calibration.py."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from plan_calibration import planned_and_measured, recipe

    planned, measured = planned_and_measured(recipe(name))
    assert 0.8 <= planned / measured <= 1.2, (name, planned, measured)


def test_the_meter_counts_storages_once_and_frees_them():
    meter = LiveBytes()
    with meter:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[:10]  # the same storage
        b = a * 2  # another 4000
        assert meter.current == 8000
        del a, b
        assert meter.current == 4000  # the view keeps its storage
        del view
    assert meter.current == 0 and meter.peak == 8000


def test_attention_on_meta_counts_as_a_fused_kernel():
    """PyTorch's meta SDPA is the math path (a [B, H, L, L] matrix); the plan counts what the fused
    kernels a GPU runs keep: the output and one float32 per query row."""
    q = torch.zeros(2, 4, 64, 8, device="meta")
    meter = LiveBytes()
    with meter, fused_attention_on_meta():
        meter.track(q)
        base = meter.reset_peak()
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert out.shape == q.shape and meter.peak - base == 2 * 4 * 64 * 8 * 4 + 2 * 4 * 64 * 4


def test_the_shipped_large_models_have_their_published_sizes():
    from samplers.skeletons import FLUX_DEV, SD35_MEDIUM, skeleton

    sizes = {}
    for name in (SD35_MEDIUM, FLUX_DEV):
        pipeline, _, _ = skeleton(name)
        sizes[name] = {k: sum(p.numel() for p in m.parameters()) for k, m in pipeline.components.items() if isinstance(m, torch.nn.Module)}
    assert sizes[FLUX_DEV]["transformer"] == 11_901_408_320  # FLUX.1-dev's 12B transformer
    assert sizes[FLUX_DEV]["text_encoder_2"] == sizes[SD35_MEDIUM]["text_encoder_3"]  # one T5 v1.1 XXL
    assert 4.76e9 < sizes[FLUX_DEV]["text_encoder_2"] < 4.77e9
    assert 2.24e9 < sizes[SD35_MEDIUM]["transformer"] < 2.25e9  # MMDiT-X
    assert 694e6 < sizes[SD35_MEDIUM]["text_encoder_2"] < 695e6  # OpenCLIP bigG text tower


def test_flux_lora_needs_sharding_and_says_how(capsys):
    """FLUX.1-dev's weights (about 35 GiB with PickScore) do not leave room on a 40 GiB GPU: DDP does
    not fit, FSDP2 over 8 GPUs does (about 22 GiB each; DanceGRPO reports about 20 GB per GPU for FLUX
    LoRA on 8), and on 24 GiB GPUs only with the shards offloaded to the host."""
    from align.cli import main

    assert main(["plan", "configs/flux.1-dev/grpo-pickscore.yaml", "--gpus", "8", "--gpu-memory", "40"]) == 0
    out = capsys.readouterr().out
    assert "ddp: no  fsdp2: yes" in out
    assert "fits fsdp2 on 8 GPU(s): accelerate launch --config_file configs/accelerate/8gpu-fsdp.yaml" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    ddp, fsdp2, offload = (float(v) for v in total.split()[-3:])
    assert 36 < ddp < 50 and 15 < fsdp2 < 24 and offload < fsdp2
    assert main(["plan", "configs/flux.1-dev/grpo-pickscore.yaml", "--gpus", "8", "--gpu-memory", "24"]) == 0
    assert "fsdp2: no  fsdp2+offload: yes" in capsys.readouterr().out
    assert main(["plan", "configs/flux.1-dev/grpo-pickscore.yaml", "--gpus", "1", "--gpu-memory", "8"]) == 0
    assert "does not fit 1 x 8 GiB" in capsys.readouterr().out
    assert main(["plan", "configs/flux.1-dev/grpo-pickscore.yaml", "--gpus", "0"]) == 2
