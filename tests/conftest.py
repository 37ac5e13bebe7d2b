import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import functools

import pytest

TINY_MODELS = ["tiny:sd15", "tiny:sd2", "tiny:sdxl", "tiny:sd3", "tiny:flux", "tiny:turbo", "tiny:sdxl-turbo"]


@functools.cache
def tiny_adapter(name: str, **kwargs):
    from samplers.models import load_adapter

    return load_adapter(name, **kwargs)


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
