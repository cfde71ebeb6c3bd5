"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set before any import."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base():
    """The random tiny SD-architecture model (seed 0). Shared: tests must not modify it."""
    from lora_core.models import build_tiny_random

    return build_tiny_random(seed=0)


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_base, tmp_path_factory):
    """``tiny_base`` saved in the diffusers folder layout."""
    return tiny_base.save(tmp_path_factory.mktemp("tiny") / "tiny-sd")
