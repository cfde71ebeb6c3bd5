"""Cores as slots that the book runner and its notebook kernels share.

The runner executes chapters side by side, one kernel per core. Once it has no chapter left to
start, a core falls idle while the last chapters finish (the book's last chapter used to run
minutes alone on one of two cores). Slots hand that core to a kernel still working:

- :func:`slot_folder` (the runner): one lock file per core, and the number of chapters to
  execute, in a temporary folder named by ``LORA_CORE_SLOTS``, which the processes it starts
  inherit;
- :func:`held_slot` (around each chapter the runner executes): holds one slot, waiting for one
  to be free, for as long as the chapter runs, and marks the chapter started;
- :class:`ExtraSlots` (inside a kernel, :func:`lora_core.train_pool.map_side_by_side`): once every
  chapter has started, takes the slots nobody holds, without waiting, so the rest of its jobs run
  in that many more child processes; they return to the pool when its jobs end. Before that, a
  free slot is only a chapter between its predecessor's end and its own start, never a kernel's.

A slot is an exclusive ``flock`` on its file, so a process that dies, or closes the file, frees it.
Without ``LORA_CORE_SLOTS`` (a chapter executed alone, papermill, a test) nothing is taken and
every function here is a no-op.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

from lora_core.threads import environment_variable

SLOTS_ENV = "LORA_CORE_SLOTS"
CHAPTERS_FILE = "chapters"   # how many chapters the runner executes; each started one leaves started-<name>
WAIT_S = 0.2     # how often a chapter waiting for a slot looks again


@contextlib.contextmanager
def slot_folder(cores: int, chapters: int) -> Iterator[Path]:
    """A folder of ``cores`` slot files, for ``chapters`` chapters to execute, named in
    ``LORA_CORE_SLOTS`` while inside; removed, and the variable restored, afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="lora-core-slots-"))
    for index in range(cores):
        (folder / f"slot-{index}").touch()
    (folder / CHAPTERS_FILE).write_text(str(chapters))
    try:
        with environment_variable(SLOTS_ENV, str(folder)):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def take_free(limit: int) -> list[IO]:
    """Up to ``limit`` slots that nobody holds, held until their files are closed; none without
    ``LORA_CORE_SLOTS``."""
    folder = os.environ.get(SLOTS_ENV)
    taken: list[IO] = []
    if not folder or limit <= 0:
        return taken
    for path in sorted(Path(folder).glob("slot-*")):
        handle = open(path, "rb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        taken.append(handle)
        if len(taken) == limit:
            break
    return taken


@contextlib.contextmanager
def held_slot(chapter: str) -> Iterator[None]:
    """One slot for the duration of ``chapter``, waiting until one is free; nothing without
    ``LORA_CORE_SLOTS``."""
    folder = os.environ.get(SLOTS_ENV)
    if not folder:
        yield
        return
    taken = take_free(1)
    while not taken:
        time.sleep(WAIT_S)
        taken = take_free(1)
    (Path(folder) / f"started-{chapter}").touch()
    try:
        yield
    finally:
        taken[0].close()


def every_chapter_started() -> bool:
    """Whether every chapter of the runner's folder holds, or has held, a slot (False without one)."""
    folder = os.environ.get(SLOTS_ENV)
    if not folder or not (Path(folder) / CHAPTERS_FILE).exists():
        return False
    return len(list(Path(folder).glob("started-*"))) >= int((Path(folder) / CHAPTERS_FILE).read_text())


class ExtraSlots:
    """The slots one kernel takes beside its own core, returned on exit.

    >>> with ExtraSlots() as extra:     # no LORA_CORE_SLOTS here: nothing to take
    ...     extra.take(3)
    0
    """

    def __init__(self) -> None:
        self.handles: list[IO] = []

    def take(self, wanted: int) -> int:
        """Once every chapter has started, take free slots until ``wanted`` are held (fewer when fewer
        are free); how many are held."""
        if every_chapter_started():
            self.handles += take_free(wanted - len(self.handles))
        return len(self.handles)

    def __enter__(self) -> ExtraSlots:
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.close()
        self.handles = []
