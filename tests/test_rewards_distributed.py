"""The discriminator under torch.distributed: two CPU processes (gloo), each with its own half of
the batch, average their gradients into those of one process with the whole batch, and so keep the
same discriminator. This process is rank 0; one spawned process is rank 1."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from rewards.base import build_reward
from rewards.tiny import tiny_dino


def _batch():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=generator), torch.rand(4, 3, 32, 32, generator=generator) * 0.5


def _train(rank: int, directory: str, port: int) -> list[torch.Tensor]:
    """Two updates on this rank's half of the batch: [first step's gradients..., final parameters...]."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank that dies leaves the other waiting at most a minute, not torch's 30-minute default
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        reward = build_reward("discriminator", model=directory, hidden=8, lr=1e-2)
        real, fake = _batch()
        reward.update(real[2 * rank : 2 * rank + 2], fake[2 * rank : 2 * rank + 2])
        gradients = [p.grad.clone() for p in reward.head_parameters()]
        reward.update(real[2 * rank : 2 * rank + 2], fake[2 * rank : 2 * rank + 2])
        return gradients + [p.detach().clone() for p in reward.head_parameters()]
    finally:
        dist.destroy_process_group()


def _worker(rank: int, directory: str, port: int, out: str) -> None:
    torch.save(_train(rank + 1, directory, port), out)


def test_two_processes_keep_one_discriminator(tmp_path):
    directory = tiny_dino(tmp_path / "dino")
    port = free_port()
    other = mp.spawn(_worker, args=(directory, port, str(tmp_path / "rank1.pt")), nprocs=1, join=False)
    try:
        mine = _train(0, directory, port)
        assert other.join(timeout=120), "rank 1 did not finish within 2 minutes"
    finally:
        for process in other.processes:
            if process.is_alive():
                process.kill()
    theirs = torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))  # same parameters, same gradients
    single = build_reward("discriminator", model=directory, hidden=8, lr=1e-2)
    single.update(*_batch())
    whole = [p.grad for p in single.head_parameters()]
    for averaged, expected in zip(mine, whole):
        torch.testing.assert_close(averaged, expected, atol=1e-7, rtol=1e-5)
