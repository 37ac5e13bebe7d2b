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
