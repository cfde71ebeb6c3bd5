"""Where a relative path points: the project root, not the process's working directory.

Configs store folders as written (``data/styles/twemoji/train``, ``runs``), so their hashes do
not depend on where the repository is checked out. Whatever reads or writes those folders
resolves them with :func:`resolve`, so ``train()`` finds the same images and run folders from a
notebook, a test or a shell in any directory.

>>> resolve("data/styles") == REPO_ROOT / "data" / "styles"
True
>>> resolve("/srv/images"), resolve("images", root="/srv")
(PosixPath('/srv/images'), PosixPath('/srv/images'))
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` itself when absolute (after ``~`` expansion), else ``root / path``; ``root``
    defaults to the project root (the folder holding ``lora_core/``)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(root if root is not None else REPO_ROOT) / path
