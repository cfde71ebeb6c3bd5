"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set before any import."""
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# A chapter trains its runs one at a time here: the suite already runs one pytest worker per core
# (the tests of lora_core.train_pool pass their own count).
os.environ.setdefault("LORA_CORE_TRAIN_PROCESSES", "1")

import numpy as np  # noqa: E402
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
    ``(root, runs)``. Built once per test run (minutes) for every test that reads the built book:
    under pytest-xdist (``make test``) the workers share one build, made by the first worker to
    ask while the others wait on its lock, and read the runs back from its record."""
    from lora_core.book import NotebookRun, run_book
    from lora_core.io import exclusive_lock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base   # this run's folder
    root, record = shared / "smoke-book", shared / "smoke-book.json"
    with exclusive_lock(shared / "smoke-book.lock"):
        if not record.exists():
            runs = run_book("smoke", {}, root=root)
            record.write_text(json.dumps([[r.name, str(r.output), r.wall_seconds, r.parameters] for r in runs]))
    return root, [NotebookRun(name, Path(output), wall, parameters)
                  for name, output, wall, parameters in json.loads(record.read_text())]


class BrightnessEvaluator:
    """An evaluator that judges style by mean brightness (dark: the base style, bright: the other
    ``classes`` alike); true images are mid-grey and every subject is recognised."""

    base_style, cache = "noto", None

    def __init__(self, classes):
        self.style_classifier = type("Judge", (), {"classes": tuple(classes)})()

    def true_images(self, subject_keys, style, resolution):
        return torch.full((len(subject_keys), 3, resolution, resolution), 128, dtype=torch.uint8)

    def style_probabilities(self, images):
        bright = images.double().mean(dim=(1, 2, 3)) / 255
        return torch.stack([1 - bright, bright / 3, bright / 3, bright / 3], dim=1)

    def subject_hits(self, images, subject_keys):
        return np.ones(len(subject_keys))


@pytest.fixture
def brightness_evaluator():
    """:class:`BrightnessEvaluator`, to build with the judge's classes."""
    return BrightnessEvaluator
