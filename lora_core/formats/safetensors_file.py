"""safetensors files with one byte layout per content, and a digest of the content.

The safetensors package's writer (Rust) serialises the metadata map in a per-process random
order, so the same tensors and metadata give files with different sha256 from run to run.
:func:`save_safetensors` writes the format itself with a canonical header: an 8-byte little-endian
header length, the JSON header (``__metadata__`` with sorted keys first, then the tensors in data
order; compact, UTF-8, padded with spaces to a multiple of 8 as the Rust writer pads), then the
raw little-endian tensor bytes, widest dtype first and by name within a width (so every tensor
starts at a multiple of its item size, as the Rust writer also guarantees). Equal tensors (dtype,
shape, bytes) and equal metadata give bit-identical files. :func:`content_digest` is the sha256 of
that canonical form, read from any safetensors file: for our files it is the file's sha256, for
files from other writers it ignores their header order.

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
>>> _ = save_safetensors(path, {"b": torch.ones(2), "a": torch.zeros(1, dtype=torch.float16)}, {"z": "1", "a": "2"})
>>> path.read_bytes()[8:80].decode()
'{"__metadata__":{"a":"2","z":"1"},"b":{"dtype":"F32","shape":[2],"data_o'
>>> content_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
True
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping

import torch

from lora_core.io import atomic_path

# safetensors dtype names, as the safetensors package maps them to torch.
TORCH_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
                torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16"}
ITEM_SIZES = {name: torch.empty(0, dtype=dtype).element_size() for dtype, name in TORCH_DTYPES.items()}
HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000  # the safetensors package refuses larger headers too
CHUNK_BYTES = 1 << 24            # content_digest reads checkpoints of several GB in pieces


def _data_order(entries: Iterable[tuple[str, str]]) -> list[str]:
    """Tensor names in data order: widest item first (keeps every tensor aligned), then by name."""
    return [name for name, dtype in sorted(entries, key=lambda entry: (-ITEM_SIZES[entry[1]], entry[0]))]


def canonical_header(tensors: Mapping[str, tuple[str, list[int], int]], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length and the header of a file holding ``name -> (dtype, shape, nbytes)``,
    the tensors laid out in :func:`_data_order`."""
    header: dict = {} if metadata is None else {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in _data_order((name, dtype) for name, (dtype, _, _) in tensors.items()):
        dtype, shape, nbytes = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(HEADER_LENGTH_BYTES, "little") + text


def _tensor_bytes(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype not in TORCH_DTYPES:
        raise TypeError(f"tensor {name!r}: dtype {tensor.dtype} has no safetensors name here "
                        f"(supported: {', '.join(map(str, TORCH_DTYPES))})")
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` and string ``metadata`` as a canonical ``.safetensors`` file, atomically."""
    path = Path(path)
    if sys.byteorder != "little":
        raise RuntimeError("save_safetensors writes little-endian data and runs on little-endian hosts only")
    bad = {key: type(value).__name__ for key, value in (metadata or {}).items()
           if not isinstance(key, str) or not isinstance(value, str)}
    if bad:
        raise TypeError(f"{path}: safetensors metadata values must be str (keys too), got {bad}")
    raw = {name: _tensor_bytes(name, tensor) for name, tensor in tensors.items()}
    described = {name: (TORCH_DTYPES[tensors[name].dtype], list(tensors[name].shape), raw[name].numel())
                 for name in raw}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(canonical_header(described, metadata))
        for name in _data_order((name, dtype) for name, (dtype, _, _) in described.items()):
            handle.write(raw[name].numpy())
    return path


def _read_header(handle: BinaryIO, path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    prefix = handle.read(HEADER_LENGTH_BYTES)
    length = int.from_bytes(prefix, "little") if len(prefix) == HEADER_LENGTH_BYTES else -1
    if not 0 < length <= min(size - HEADER_LENGTH_BYTES, MAX_HEADER_BYTES):
        raise ValueError(f"{path}: not a safetensors file (its first 8 bytes give no header length that fits "
                         f"its {size} bytes)")
    try:
        header = json.loads(handle.read(length))
    except ValueError:
        raise ValueError(f"{path}: not a safetensors file (the header is not JSON)") from None
    return header, HEADER_LENGTH_BYTES + length


def content_digest(path: str | Path) -> str:
    """sha256 (64 hex) of a safetensors file's canonical form (see the module docstring).

    Files with equal tensors (names, dtypes, shapes, bytes) and equal metadata get equal digests
    whatever order their writer put the header in.
    """
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header, data_start = _read_header(handle, path)
        metadata = header.pop("__metadata__", None)
        unknown = sorted({info["dtype"] for info in header.values()} - set(ITEM_SIZES))
        if unknown:
            raise ValueError(f"{path}: dtype(s) {unknown} unknown to content_digest")
        spans = {name: info["data_offsets"] for name, info in header.items()}
        digest.update(canonical_header({name: (info["dtype"], info["shape"], spans[name][1] - spans[name][0])
                                        for name, info in header.items()}, metadata))
        for name in _data_order((name, info["dtype"]) for name, info in header.items()):
            start, end = spans[name]
            handle.seek(data_start + start)
            for chunk_start in range(start, end, CHUNK_BYTES):
                wanted = min(CHUNK_BYTES, end - chunk_start)
                chunk = handle.read(wanted)
                if len(chunk) != wanted:
                    raise ValueError(f"{path}: truncated safetensors file (tensor {name!r} ends past the end)")
                digest.update(chunk)
    return digest.hexdigest()
