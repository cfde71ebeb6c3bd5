"""Atomic file output: write to a temporary file (or folder) beside the target, then rename.

A crash or an exception never leaves a half-written result under the final name. An exception
removes the temporary; a kill (SIGKILL, power loss) cannot, so whoever writes into a folder again
calls :func:`remove_temporaries` first.

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
