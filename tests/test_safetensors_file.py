"""The canonical safetensors writer and the content digest the caches key on.

Identical content must give identical bytes across processes: the safetensors package's own
writer orders the metadata differently in every process, so two runs of one config wrote files
with different sha256 and the generated-image and mixing caches missed after every retrain.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_core.formats import content_digest, save_safetensors

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2]
METADATA = {f"lsl_field_{index}": f"value {index}" for index in range(12)} | {"ss_network_dim": "4", "é": "ü"}


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bytes_equal_the_safetensors_package_where_its_order_cannot_vary(tmp_path):
    """One metadata key and one tensor per item size: nothing for either writer to order freely."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(3, 5, generator=generator, dtype=torch.float64),
               "b_scalar": torch.tensor(2.5), "a_empty": torch.zeros(0, 3),
               "half": torch.randn(7, generator=generator).half(), "mask": torch.tensor([True, False, True])}
    save_file(tensors, str(tmp_path / "package.safetensors"), metadata={"format": "pt"})
    save_safetensors(tmp_path / "ours.safetensors", tensors, {"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "package.safetensors").read_bytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_through_the_safetensors_loader(tmp_path, dtype):
    values = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 40
    tensors = {"matrix": values.to(dtype), "scalar": values[0, 0].to(dtype), "odd": values[:, :1].to(dtype).t()}
    path = save_safetensors(tmp_path / "t.safetensors", tensors, METADATA)
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert (loaded[name].dtype, loaded[name].shape) == (tensor.dtype, tensor.shape)
        assert _bits(loaded[name]) == _bits(tensor), name
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == METADATA
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_length % 8 == 0
    offsets = [info["data_offsets"][0] for name, info in json.loads(path.read_bytes()[8:8 + header_length]).items()
               if name != "__metadata__"]
    assert all(offset % torch.empty(0, dtype=dtype).element_size() == 0 for offset in offsets)


def test_content_digest_reads_content_not_header_order(tmp_path):
    generator = torch.Generator().manual_seed(2)
    tensors = {f"layer_{i}.weight": torch.randn(4, 4, generator=generator) for i in range(6)}
    tensors["layer_0.alpha"] = torch.tensor(2.0, dtype=torch.float16)
    package = tmp_path / "package.safetensors"
    save_file(tensors, str(package), metadata=METADATA)    # the Rust writer's random metadata order
    ours = save_safetensors(tmp_path / "ours.safetensors", tensors, METADATA)
    assert content_digest(package) == content_digest(ours) == _sha(ours)
    changed = {"one value": (tensors, {**METADATA, "lsl_field_3": "other"}),
               "one bit": ({**tensors, "layer_2.weight": tensors["layer_2.weight"].clone().index_put_(
                   (torch.tensor([0]), torch.tensor([0])), torch.tensor(0.0))}, METADATA),
               "a dtype with the same bytes": ({**tensors, "layer_0.alpha": tensors["layer_0.alpha"].view(
                   torch.bfloat16)}, METADATA),
               "a name": ({("renamed" if k == "layer_5.weight" else k): v for k, v in tensors.items()}, METADATA),
               "a shape": ({**tensors, "layer_1.weight": tensors["layer_1.weight"].reshape(2, 8)}, METADATA),
               "no metadata": (tensors, None)}
    digests = {what: content_digest(save_safetensors(tmp_path / f"{index}.safetensors", *content))
               for index, (what, content) in enumerate(changed.items())}
    assert content_digest(ours) not in digests.values() and len(set(digests.values())) == len(digests)


def test_writer_and_digest_refuse_bad_input_by_name(tmp_path):
    with pytest.raises(TypeError, match=r"t\.safetensors: safetensors metadata values must be str.*'rank': 'int'"):
        save_safetensors(tmp_path / "t.safetensors", {"x": torch.ones(1)}, {"rank": 4})
    with pytest.raises(TypeError, match=r"tensor 'x': dtype torch\.complex64 has no safetensors name"):
        save_safetensors(tmp_path / "t.safetensors", {"x": torch.ones(1, dtype=torch.complex64)})
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    pickle = tmp_path / "renamed_pickle.safetensors"
    torch.save({"x": torch.ones(3)}, pickle)
    with pytest.raises(ValueError, match=r"renamed_pickle\.safetensors: not a safetensors file"):
        content_digest(pickle)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(save_safetensors(tmp_path / "whole.safetensors", {"x": torch.ones(64)}).read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"truncated\.safetensors: truncated safetensors file \(tensor 'x'"):
        content_digest(truncated)


# ---- two processes, every export ----------------------------------------------------------

EXPORT_SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path
from types import SimpleNamespace
import torch
from lora_core.adapters import get_adapter
from lora_core.adapters.lora import LoraOptions
from lora_core.adapters.lycoris import LycorisOptions
from lora_core.adapters.textual_inversion import TextualInversionOptions
from lora_core.adapters.dreambooth import DreamBoothOptions
from lora_core.formats import provenance_metadata, save_single_file
from lora_core.models import build_tiny_random

out, tokenizer_dir = Path(sys.argv[1]), sys.argv[2]
metadata = provenance_metadata(config_hash="abc123", method="lora", rank=4, alpha=8, base_model="tiny-random",
                               seed=0, resolution=32, target_modules=["to_q", "to_k", "conv1"])
options = {"lora": LoraOptions(rank=4, alpha=8.0, target_modules=("to_q", "to_k", "conv1"), train_text_encoder=True),
           "textual_inversion": TextualInversionOptions(num_vectors=2),
           "lycoris": LycorisOptions(algo="loha"), "dreambooth": DreamBoothOptions(train_text_encoder=True)}
for method, method_options in options.items():
    torch.manual_seed(0)
    base = build_tiny_random(seed=0, tokenizer_dir=tokenizer_dir)
    adapter = get_adapter(method)(SimpleNamespace(method=method, options=method_options, learning_rate=1e-3,
                                                  text_encoder_learning_rate=None, seed=0, resolution=32))
    adapter.attach(base)
    with torch.no_grad():  # every trained tensor nonzero and seeded (a fresh LoRA has B = 0)
        for parameter in (p for group in adapter.param_groups(base) for p in group["params"]):
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(parameter.numel())))
    adapter.export(base, out / method, metadata)
save_single_file(build_tiny_random(seed=0, tokenizer_dir=tokenizer_dir), out / "single_file.safetensors", metadata)
print(json.dumps({path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
                  for path in sorted(out.rglob("*")) if path.is_file()}))
"""


def _export_in_a_fresh_process(folder: Path, tokenizer_dir: Path, hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(folder), str(tokenizer_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_identical_exports_are_bit_identical_across_processes(tmp_path):
    """LoRA (diffusers + kohya), textual inversion (diffusers + A1111), LyCORIS, DreamBooth's
    diffusers folder and the single-file checkpoint, from two processes with different hash seeds.

    Both processes read one tokenizer folder: training a BPE tokenizer breaks ties differently in
    every process (the tokenizers library), which would make the bases themselves differ.
    """
    from lora_core.tokenizer import build_clip_tokenizer

    tokenizer_dir = build_clip_tokenizer(["a photo of an emoji face heart cat in the style of"], tmp_path / "tokenizer",
                                         vocab_size=600, reserved_words=("sks",))
    first = _export_in_a_fresh_process(tmp_path / "first", tokenizer_dir, "1")
    second = _export_in_a_fresh_process(tmp_path / "second", tokenizer_dir, "2")
    expected = {"lora/pytorch_lora_weights.safetensors", "lora/lora_kohya.safetensors",
                "textual_inversion/learned_embeds.safetensors", "textual_inversion/lsl-style.safetensors",
                "lycoris/lycoris.safetensors", "dreambooth/model/unet/diffusion_pytorch_model.safetensors",
                "single_file.safetensors"}
    assert expected <= first.keys() and first.keys() == second.keys()
    assert {name for name in first if first[name] != second[name]} == set()
    for name in (n for n in first if n.endswith(".safetensors")):
        assert content_digest(tmp_path / "first" / name) == first[name], name
