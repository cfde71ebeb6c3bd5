"""Phase timers: where a chapter's seconds go (training, generation, each metric network's feature
extraction, the bootstrap), recorded in every process at negligible cost.

Code marks its costly parts with :func:`phase`; time is charged to the innermost open phase only,
so a second is never counted twice and the phases of one process add up to at most its wall time
(the rest is "other": imports, model loading, plotting, tables):

>>> reset_phases()
>>> with phase("generation"):
...     with phase("features: pixels-8"):
...         pass
>>> sorted(phase_seconds()), phase_counts()["generation"]
(['features: pixels-8', 'generation'], 1)

The book runner points each notebook's kernel at a file (:data:`PHASES_FILE_ENV`); with it set, the
totals are written there whenever an outermost phase closes (a few hundred bytes, atomically: a
kill leaves the previous totals) and the runner merges them into ``book/notebooks/_profile.json``
with the notebook's wall time and the machine's load (:func:`record_notebook_profile`), which the
appendix turns into its profile table. A phase costs two clock reads and a dict update; the file
write (about a millisecond) happens once per outermost phase, seconds apart.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from lora_core.threads import environment_variable

PHASES_FILE_ENV = "LORA_CORE_PHASES_FILE"
PROFILE_FILE_NAME = "_profile.json"
OTHER = "other"

_seconds: dict[str, float] = {}
_counts: dict[str, int] = {}
_open: list[list[Any]] = []   # [name, start of its current slice] per open phase, innermost last


def reset_phases() -> None:
    """Forget every recorded phase of this process (open phases keep timing)."""
    _seconds.clear()
    _counts.clear()


def phase_seconds() -> dict[str, float]:
    """Seconds charged to each phase in this process so far."""
    return dict(_seconds)


def phase_counts() -> dict[str, int]:
    """How often each phase was entered."""
    return dict(_counts)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Charge the time spent inside to ``name``; an enclosing phase pauses meanwhile."""
    now = time.perf_counter()
    if _open:
        outer = _open[-1]
        _seconds[outer[0]] = _seconds.get(outer[0], 0.0) + now - outer[1]
    entry = [name, now]
    _open.append(entry)
    _counts[name] = _counts.get(name, 0) + 1
    try:
        yield
    finally:
        now = time.perf_counter()
        _open.pop()
        _seconds[name] = _seconds.get(name, 0.0) + now - entry[1]
        if _open:
            _open[-1][1] = now
        else:
            _write_if_requested()


def _write_if_requested() -> None:
    target = os.environ.get(PHASES_FILE_ENV)
    if target:
        write_phases(Path(target))


def write_phases(path: Path) -> Path:
    """This process's phase totals, counts and torch thread count as JSON at ``path`` (atomically)."""
    from lora_core.io import atomic_write_json

    return atomic_write_json(path, {"seconds": phase_seconds(), "counts": phase_counts(),
                                    "torch_threads": _torch_threads(), "pid": os.getpid()})


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")  # never import torch only to report its threads
    return torch.get_num_threads() if torch is not None else None


def load_average() -> float | None:
    """The machine's one-minute load average (runnable processes; 2 cores busy = 2.0), None where
    the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def kernel_phases_file(path: Path) -> Iterator[Path]:
    """Child processes started inside (a notebook's kernel) write their phases to ``path``; the
    variable is restored afterwards and a stale file removed first."""
    path.unlink(missing_ok=True)
    with environment_variable(PHASES_FILE_ENV, str(path)):
        yield path


def notebook_profile(wall_seconds: float, phases: dict[str, Any], load_before: float | None,
                     load_after: float | None) -> dict[str, Any]:
    """One notebook's entry: seconds per phase plus ``other`` (wall time no phase claimed), their
    shares of the wall time, and the load around it.

    >>> entry = notebook_profile(10.0, {"seconds": {"training": 6.0, "bootstrap": 1.5}}, 1.2, 2.0)
    >>> entry["seconds"], entry["share"]["training"], entry["load_before"]
    ({'training': 6.0, 'bootstrap': 1.5, 'other': 2.5}, 0.6, 1.2)
    """
    seconds = {name: round(value, 3) for name, value in phases.get("seconds", {}).items()}
    seconds[OTHER] = round(max(0.0, wall_seconds - sum(seconds.values())), 3)
    share = {name: round(value / wall_seconds, 4) if wall_seconds > 0 else 0.0 for name, value in seconds.items()}
    return {"wall_seconds": round(wall_seconds, 3), "seconds": seconds, "share": share,
            "counts": phases.get("counts", {}), "torch_threads": phases.get("torch_threads"),
            "load_before": load_before, "load_after": load_after, "cpu_count": os.cpu_count()}


def record_notebook_profile(profile_file: Path, notebook: str, profile: str, wall_seconds: float,
                            phases_file: Path, load_before: float | None) -> dict[str, Any]:
    """Merge ``notebook``'s entry (its kernel's ``phases_file``, consumed) into ``profile_file``."""
    from lora_core.io import atomic_write_json

    phases = json.loads(phases_file.read_text()) if phases_file.is_file() else {}
    phases_file.unlink(missing_ok=True)
    entry = {**notebook_profile(wall_seconds, phases, load_before, load_average()), "profile": profile,
             "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    recorded = json.loads(profile_file.read_text()) if profile_file.is_file() else {}
    recorded[notebook] = entry
    atomic_write_json(profile_file, recorded)
    return entry
