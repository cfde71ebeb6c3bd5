"""Weights are read through one helper: a file that is not safetensors is named, and what it is said,
on every path that reads weights (LoRA, LyCORIS, embeddings, metric heads, feature cache)."""
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from lora_core.io import check_safetensors, read_safetensors


def _zip_pickle(path):
    torch.save({"weight": torch.zeros(2)}, path)   # what a renamed .pt/.ckpt holds
    return path


def _plain_pickle(path):
    path.write_bytes(pickle.dumps({"weight": [0.0, 0.0]}))
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


def _truncated(path):
    save_file({"weight": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    return path


NOT_SAFETENSORS = [
    (_zip_pickle, r"it is a zip archive, the format torch\.save writes \(a pickle checkpoint, renamed\?\); "
                  r"convert it once, in a sandbox you trust: `safetensors\.torch\.save_file"),
    (_plain_pickle, r"it starts like a Python pickle; convert it once"),
    (_empty, r"empty file \(0 bytes\)"),
    (_truncated, r"its header is missing or damaged \(truncated or another format\) \(safetensors: .*incomplete"),
]


@pytest.mark.parametrize("write, what", NOT_SAFETENSORS, ids=["zip-pickle", "pickle", "empty", "truncated"])
def test_a_file_that_is_not_safetensors_is_named_and_described(tmp_path, write, what):
    path = write(tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: not a safetensors file: {what}"):
        read_safetensors(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.safetensors: no such file$"):
        check_safetensors(tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match=r": a folder, not a file$"):
        check_safetensors(tmp_path)


def test_read_round_trips_tensors_and_metadata(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.arange(3.0)}, str(path), metadata={"rank": "4"})
    tensors, metadata = read_safetensors(path)
    assert torch.equal(tensors["a"], torch.arange(3.0)) and metadata == {"rank": "4"}
    assert check_safetensors(path) == path


def _load_lora(base, path):
    from lora_core import blend

    blend.load_lora(base, path, "renamed")


def _load_lycoris(base, path):
    from lora_core.adapters.lycoris import load_lycoris

    load_lycoris(base, path)


def _load_embedding(base, path):
    from lora_core import blend

    blend.load_embedding(base, path, token="<renamed>")


def _load_head(base, path):
    from lora_core.metrics.heads import load_head

    load_head(path)


@pytest.mark.parametrize("load", [_load_lora, _load_lycoris, _load_embedding, _load_head],
                         ids=["lora", "lycoris", "embedding", "metric-head"])
def test_every_weights_reader_names_a_renamed_pickle(tiny_base, tmp_path, load):
    import copy

    path = _zip_pickle(tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: not a safetensors file: it is a zip archive"):
        load(copy.deepcopy(tiny_base), path)


def test_a_damaged_feature_cache_file_is_named(tmp_path):
    from lora_core.metrics.backbones import get_backbone
    from lora_core.metrics.cache import FeatureCache

    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    get_backbone("pixels-8").features(images, cache=FeatureCache(tmp_path))
    (cached,) = tmp_path.glob("*.safetensors")
    _truncated(cached)
    with pytest.raises(ValueError, match=f"^{re.escape(str(cached))}: not a safetensors file"):
        get_backbone("pixels-8").features(images, cache=FeatureCache(tmp_path))
