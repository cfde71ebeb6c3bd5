"""Files in and out: atomic output, and the one way weights files are read.

Output goes to a temporary file beside the target, then is renamed: a crash or an exception
never leaves a half-written result under the final name. Weights are read only from safetensors
files, through :func:`open_safetensors`, whose errors name the file and say what it is instead.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> with atomic_path(target) as tmp:
...     _ = tmp.write_text("done")
>>> target.read_text()
'done'
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: papermill, safetensors and PIL choose formats by extension.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_write_json(target: str | Path, obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ---- reading weights: safetensors only, with errors that name the file ----------------------------

PICKLE_CONVERSION = ("convert it once, in a sandbox you trust: "
                     "`safetensors.torch.save_file(torch.load(p, weights_only=True), out)`")


@contextlib.contextmanager
def open_safetensors(path: str | Path) -> Iterator[Any]:
    """``safetensors.safe_open(path, "pt")`` whose errors name the file: ``FileNotFoundError`` when
    it is missing, ``ValueError`` ("not a safetensors file", and what it looks like) otherwise.

    >>> import tempfile, pathlib, pickle
    >>> renamed = pathlib.Path(tempfile.mkdtemp()) / "lora.safetensors"
    >>> _ = renamed.write_bytes(pickle.dumps({"weight": 1}))
    >>> try:
    ...     read_safetensors(renamed)
    ... except ValueError as error:
    ...     print(str(error).replace(str(renamed.parent), "<folder>").split(";")[0])
    <folder>/lora.safetensors: not a safetensors file: it starts like a Python pickle
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: a folder, not a file")
    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise ValueError(f"{path}: not a safetensors file: {_what_it_looks_like(path)} "
                         f"(safetensors: {error})") from None
    with handle:
        yield handle


def read_safetensors(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """All tensors of a safetensors file and its metadata, through :func:`open_safetensors`."""
    with open_safetensors(path) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def check_safetensors(path: str | Path) -> Path:
    """Raise :func:`open_safetensors`'s errors unless ``path`` is a safetensors file (reads the header
    only): before a library that reads the file itself and would not say what is wrong."""
    with open_safetensors(path):
        return Path(path)


def _what_it_looks_like(path: Path) -> str:
    with open(path, "rb") as file:
        start = file.read(4)
    if not start:
        return "empty file (0 bytes)"
    if start == b"PK\x03\x04":
        return f"it is a zip archive, the format torch.save writes (a pickle checkpoint, renamed?); {PICKLE_CONVERSION}"
    if start[:1] == b"\x80":
        return f"it starts like a Python pickle; {PICKLE_CONVERSION}"
    return "its header is missing or damaged (truncated or another format)"
