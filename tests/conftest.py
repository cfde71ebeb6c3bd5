"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set before any import."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module whose steps are tiny: on two shared, busy cores two threads
    spin-wait and run ~100x slower (measured); on an idle machine one thread costs little here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_base():
    """The random tiny SD-architecture model (seed 0). Shared: tests must not modify it."""
    from lora_core.models import build_tiny_random

    return build_tiny_random(seed=0)


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_base, tmp_path_factory):
    """``tiny_base`` saved in the diffusers folder layout."""
    return tiny_base.save(tmp_path_factory.mktemp("tiny") / "tiny-sd")


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Every notebook executed in the smoke profile and the HTML built, in a temporary root:
    ``(root, runs)``. Built once per session (minutes) for every test that reads the built book."""
    from lora_core.book import run_book

    root = tmp_path_factory.mktemp("book")
    return root, run_book("smoke", {}, root=root)
