"""Files in and out: atomic output, and the one way weights files are read.

Output goes to a temporary file (or folder) beside the target, then is renamed: a crash or an
exception never leaves a half-written result under the final name. An exception removes the
temporary; a kill (SIGKILL, power loss) cannot, so whoever writes into a folder again calls
:func:`remove_temporaries` first. Weights are read only from safetensors files, through
:func:`open_safetensors`, whose errors name the file and say what it is instead.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> with atomic_path(target) as tmp:
...     _ = tmp.write_text("done")
>>> target.read_text()
'done'
>>> with atomic_folder(target.parent / "pair") as staging:
...     _ = (staging / "a.txt").write_text("a"), (staging / "b.txt").write_text("b")
>>> sorted(p.name for p in (target.parent / "pair").iterdir())
['a.txt', 'b.txt']
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)
# ".<target stem>.<8 random characters from tempfile>.tmp[<target suffix>]": the names the two
# context managers below give their temporaries, and nothing a user names a file by accident
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


class PathError(ValueError):
    """Bad input in a file or folder: ``str(error)`` is ``"<path>: <reason>"``; ``.path`` and
    ``.reason`` hold both. It pickles whole, so a child process's error reaches its parent.

    >>> import pickle
    >>> str(pickle.loads(pickle.dumps(PathError("data/x", "no images"))))
    'data/x: no images'
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


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


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target`` whole,
    so ``target`` holds either all the files written into it or does not exist."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp creates 0700; results are ordinary folders
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[Path | None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created with its folder): other processes
    asking for it wait until this one leaves. The operating system drops the lock when its holder
    dies, so a killed process leaves nothing to clean up. Where ``fcntl`` does not exist (Windows)
    nothing is locked; yields the lock file, or None then."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is named like a temporary of :func:`atomic_path` or :func:`atomic_folder`.

    >>> is_temporary("state/.training_state.k3j_9x0a.tmp.pt"), is_temporary(".step-000010.ab12cd34.tmp")
    (True, True)
    >>> is_temporary("state/training_state.pt"), is_temporary(".hidden.tmp")
    (False, False)
    """
    return bool(_TEMPORARY_NAME.match(Path(path).name))


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Remove every temporary file and folder a killed writer left anywhere under ``folder``
    (nothing when it does not exist); returns what was removed. Safe to call from several
    processes at once (one process's removal is another's missing file)."""
    folder = Path(folder)
    found = sorted(p for p in folder.rglob(".*") if is_temporary(p)) if folder.is_dir() else []
    removed = []
    for path in found:
        if any(parent in removed for parent in path.parents):
            continue  # inside a temporary folder already gone
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
