"""No host syncs in the step loops: a rollout reads nothing back from its device, and an optimiser
step reads it once (the NaN / inf decision); statistics are read once an epoch.

The rollout runs with the model on PyTorch's meta device, which stands in for a GPU: a read of a
meta tensor (item, bool, tolist, float, int) is counted here (it would raise), as is every copy
between the host and the device, by the op that makes it."""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from align.config import config_from_data

READS = {"item", "__bool__", "tolist", "__float__", "__int__", "__index__", "numpy"}


class HostSyncs(TorchFunctionMode):
    """Reads of tensors the predicate picks (by default those off the CPU), by the line of ours that made them."""

    def __init__(self, counted=lambda t: t.device.type != "cpu"):
        super().__init__()
        self.counted, self.sites = counted, collections.Counter()

    def note(self, what: str) -> None:
        ours = [
            f
            for f in traceback.extract_stack()[:-2]
            if "site-packages" not in f.filename and "/tests/" not in f.filename and not f.name.startswith("<")
        ]
        self.sites[f"{ours[-1].name} {what}" if ours else what] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS and args and isinstance(args[0], torch.Tensor) and self.counted(args[0]):
            self.note(name)
        return func(*args, **(kwargs or {}))


class HostCopies(TorchDispatchMode):
    def __init__(self, syncs: HostSyncs):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0] if func is torch.ops.aten.copy_.default else output
            if source.device != target.device:
                self.syncs.note(f"copy {source.device.type}->{target.device.type}")
        return output


def meta_adapter(model: str):
    from align.planner import meta_adapter

    data = {"model": {"name": model}, "algorithm": {"name": "flow-grpo"}, "rewards": {"terms": [{"name": "jpeg-compressibility"}]}}
    return meta_adapter(config_from_data(data))[0]


@pytest.mark.parametrize("model", ["tiny:sd3", "tiny:sd15"])
def test_an_sde_rollout_reads_nothing_from_its_device(model):
    """A 10-step SDE rollout (flow SDE on tiny:sd3, DDIM at eta 0.7 on tiny:sd15): no read of the
    device; the copies from the host are the step table, once, and the noise, drawn by the samples'
    own CPU generators (a device generator per sample is the remaining step)."""
    from samplers.noise import generators_from_seeds

    adapter = meta_adapter(model)
    prompts = ["a red circle"] * 4
    adapter.encode(prompts)
    syncs = HostSyncs()
    with torch.no_grad(), syncs, HostCopies(syncs):
        trajectory = adapter.sample(prompts, generators_from_seeds([0, 1, 2, 3]), num_steps=10, noise_levels=0.7)
    reads = {site: n for site, n in syncs.sites.items() if "copy" not in site}
    assert reads == {} and trajectory.latents.shape[1] == 11, syncs.sites
    copies = collections.Counter()
    for site, n in syncs.sites.items():
        copies[site.split()[0]] += n if "copy" in site else 0
    assert copies.pop("draw_noise") == 4 * 11  # one draw per sample for x_T and each of 10 steps
    assert sum(copies.values()) <= 2, copies  # the schedule's tables, once


def test_an_optimiser_step_reads_its_device_once(monkeypatch):
    """One Flow-GRPO optimiser step over every unit of an epoch (18 forward and backward passes) reads
    floating-point results back once: the NaN / inf flags. Its statistics stay tensors until the
    epoch's end, which reads them at once and logs the same floats."""
    from align.run_files import read_statistics

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from gpu_check import collected_epoch

    with collected_epoch("cpu") as (run, batch, units):
        stats: dict = {}
        syncs = HostSyncs(counted=lambda t: t.is_floating_point())  # on the CPU: reads of results, not of index lists
        with syncs:
            run._optimiser_step(batch, units, stats, {})
    assert len(units) > 10 and run.step == 1
    assert sum(syncs.sites.values()) <= 2, syncs.sites
    assert all(isinstance(v, torch.Tensor) for v in stats["policy_loss"])
    read = read_statistics(stats)
    assert read["policy_loss"] == [float(v) for v in stats["policy_loss"]]
    assert read["grad_norm"] == [float(stats["grad_norm"][0])]


def test_counter_noise_is_per_sample_standard_normal_and_made_on_the_device():
    """sampling.noise=counter: sample i's k-th draw depends on its seed and k only; the draws are
    standard normal and uncorrelated from draw to draw; on the meta device a whole rollout copies
    only the seeds (once) and the step tables from the host."""
    from samplers.noise import CounterNoise, draw_noise, generators_from_seeds

    for make in (lambda seeds: CounterNoise(seeds), generators_from_seeds):  # both kinds keep the promise
        first, second = make([0, 1, 2]), make([7, 1, 9])
        a = [draw_noise((3, 4, 16, 16), first) for _ in range(2)]
        b = [draw_noise((3, 4, 16, 16), second) for _ in range(2)]
        assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b)) and not torch.equal(a[0][0], b[0][0])
    z = [CounterNoise(range(8)).draw((8, 16, 32, 32), "cpu") for _ in range(1)][0]
    z2 = CounterNoise(range(8))
    z2.draw((8, 16, 32, 32), "cpu")
    later = z2.draw((8, 16, 32, 32), "cpu")
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([z.flatten(), later.flatten()]))[0, 1])) < 0.01
    adapter = meta_adapter("tiny:sd3")
    adapter.noise = "counter"
    prompts = ["a red circle"] * 4
    adapter.encode(prompts)
    syncs = HostSyncs()
    with torch.no_grad(), syncs, HostCopies(syncs):
        adapter.sample(prompts, generators_from_seeds([0, 1, 2, 3]), num_steps=10, noise_levels=0.7)
    assert sum(syncs.sites.values()) <= 2, syncs.sites  # the seeds and the step tables, once each
