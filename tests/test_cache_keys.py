"""The generated-image and mixing caches key on a LoRA file's content, not on its bytes.

A retrain of the same config writes equal tensors and metadata; with the safetensors package's
writer the header order (so the sha256) changed from process to process and both caches missed.
Here the "other writer" is simulated exactly: the same file with its header keys in another order.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from lora_core import blend
from lora_core.experiments import mixing
from lora_core.experiments.common import generate_eval_images
from lora_core.formats import content_digest, save_lora_diffusers
from lora_core.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")


def reordered_copy(path: Path, target: Path) -> Path:
    """``path`` with its header's keys (metadata and tensors) in reverse order; data untouched."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = dict(reversed(header["__metadata__"].items()))
    text = json.dumps(dict(reversed(header.items())), separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    target.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])
    return target


@pytest.fixture(scope="module")
def base(tiny_base):
    return copy.deepcopy(tiny_base)


@pytest.fixture(scope="module")
def lora_pair(base, tmp_path_factory):
    """Two LoRA files as training writes them, and copies of each with another header order."""
    folder = tmp_path_factory.mktemp("loras")
    files = []
    for name, alpha, seed in (("ink", 4.0, 1), ("moss", 8.0, 2)):
        blend.add_random_adapter(base, name, rank=4, alpha=alpha, seed=seed)
        metadata = {"lsl_config_hash": f"hash-{name}", "lsl_seed": str(seed), "ss_network_alpha": str(alpha)}
        original = save_lora_diffusers(folder / f"{name}.safetensors", base.unet, None, name, metadata)
        files.append((original, reordered_copy(original, folder / f"{name}_retrained.safetensors")))
    blend.remove_adapters(base, ["ink", "moss"])
    for original, retrained in files:
        assert hashlib.sha256(original.read_bytes()).digest() != hashlib.sha256(retrained.read_bytes()).digest()
        assert content_digest(original) == content_digest(retrained)
    return files


def test_generated_images_are_reused_for_a_retrained_file_with_equal_content(base, lora_pair, tmp_path,
                                                                              monkeypatch):
    import lora_core.generate

    profile = get_profile("smoke").replace(inference_steps=1)
    (ink, ink_retrained), _ = lora_pair
    first = generate_eval_images(base, ["a cat"], [1], profile, adapter=ink, cache_dir=tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(lora_core.generate, "generate_cells", lambda *a, **k: pytest.fail("regenerated"))
        assert torch.equal(generate_eval_images(base, ["a cat"], [1], profile, adapter=ink_retrained,
                                                cache_dir=tmp_path), first)
    blend.load_lora(base, ink, "ink_again")  # the same tensors under one other metadata value: a miss
    try:
        changed = save_lora_diffusers(tmp_path / "loras" / "changed.safetensors", base.unet, None, "ink_again",
                                      {"lsl_config_hash": "another-config"})
    finally:
        blend.remove_adapters(base, ["ink_again"])
    generate_eval_images(base, ["a cat"], [1], profile, adapter=changed, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_mixes_are_reused_for_retrained_inputs_with_equal_content(base, lora_pair, tmp_path, monkeypatch):
    (ink, ink_retrained), (moss, moss_retrained) = lora_pair
    files = mixing.mix_files(base, ink, moss, (0.5,), cache_dir=tmp_path)
    monkeypatch.setattr(mixing, "save_factors", lambda *a, **k: pytest.fail("mixed again"))
    assert mixing.mix_files(base, ink_retrained, moss_retrained, (0.5,), cache_dir=tmp_path) == files
