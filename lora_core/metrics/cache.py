"""Features computed once, metrics many times: a cache keyed by image content and backbone.

The key is the sha256 of the uint8 pixels, their shape, the backbone's name and what was
computed (``"features"`` or ``"logits"``), so the same images give the same key whether they
arrived as a tensor, PIL images or a folder of PNGs. Entries live in memory and, with a
``directory``, also as ``.safetensors`` files written atomically (a crash never leaves half a
file under the final name).

>>> import torch
>>> from lora_core.metrics.backbones import get_backbone
>>> cache = FeatureCache()
>>> images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
>>> first = get_backbone("pixels-8").features(images, cache=cache)
>>> again = get_backbone("pixels-8").features(images.clone(), cache=cache)
>>> (cache.misses, cache.hits, torch.equal(first, again))
(1, 1, True)
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from lora_core.io import atomic_path, read_safetensors


def content_key(images_uint8: torch.Tensor, backbone_name: str, kind: str) -> str:
    """sha256 hex digest of pixels, shape, backbone name and kind of output."""
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"content_key: images must be uint8, got {images_uint8.dtype}")
    digest = hashlib.sha256(f"{backbone_name}|{kind}|{tuple(images_uint8.shape)}|".encode())
    digest.update(images_uint8.contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """In-memory dict of feature tensors, optionally mirrored to ``directory`` as safetensors."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def path_for(self, key: str, backbone_name: str, kind: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{backbone_name}-{kind}-{key[:32]}.safetensors"

    def get_or_compute(self, backbone: Any, images_uint8: torch.Tensor, kind: str,
                       compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Cached ``compute(images_uint8)`` for ``backbone.name`` and ``kind``; computes on a miss."""
        key = content_key(images_uint8, backbone.name, kind)
        path = self.path_for(key, backbone.name, kind)
        if key not in self._memory and path is not None and path.is_file():
            self._memory[key] = self._read(path, key)
        if key in self._memory:
            self.hits += 1
            return self._memory[key].clone()
        self.misses += 1
        values = compute(images_uint8).detach().cpu().contiguous()
        self._memory[key] = values
        if path is not None:
            with atomic_path(path) as tmp:
                save_file({kind: values}, str(tmp), metadata={"key": key, "backbone": backbone.name, "kind": kind})
        return values.clone()

    @staticmethod
    def _read(path: Path, key: str) -> torch.Tensor:
        tensors, metadata = read_safetensors(path)
        if metadata.get("key") != key:
            raise ValueError(f"feature cache file {path} does not hold key {key[:12]}... (found {metadata.get('key')!r})")
        return tensors[metadata["kind"]]
