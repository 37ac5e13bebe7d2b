import os

# Offline whatever the caller exported: a test that expects a hub load to fail must not download instead.
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")

import copy
import functools
import socket

import pytest

TINY_MODELS = [
    "tiny:sd15", "tiny:sd2", "tiny:sdxl", "tiny:sd3", "tiny:flux", "tiny:turbo", "tiny:sdxl-turbo", "tiny:wan"
]


@functools.cache
def _built_adapter(name: str, **kwargs):
    from samplers.models import load_adapter

    return load_adapter(name, **kwargs)


def tiny_adapter(name: str, **kwargs):
    """A fresh copy of a tiny adapter built once per session: a test may train, freeze or switch its
    copy without changing what the next test gets (shared, mutated adapters made order matter)."""
    return copy.deepcopy(_built_adapter(name, **kwargs))


def free_port() -> int:
    """A loopback TCP port the OS has just handed out, for a test's rendezvous: never accelerate's and
    torch's default 29500, which another run (or another test) may hold."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(params=TINY_MODELS)
def tiny(request):
    return tiny_adapter(request.param)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU; where torch sees none they skip."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
