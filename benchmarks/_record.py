"""What every benchmark writes beside its numbers: date, machine, library versions, thread count
and the machine's load, into ``benchmarks/results/<name>.json`` (atomically), where the book's
appendix reads them.

On a shared machine absolute seconds mean little: benchmarks here report ratios measured side by
side and CPU seconds per unit of work (``time.process_time``), which another process's load
changes far less than wall time, and record the one-minute load average before and after.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
# ``python benchmarks/bench_x.py`` puts benchmarks/ first on the path, so ``lora_core`` would come
# from whichever checkout the environment installed: measure this checkout's (its children too)
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def save_figure(fig, ax, result: dict[str, Any], path: Path) -> Path:
    """Title ``ax`` (None: the whole figure) with the date, processor, cores and load of
    ``result``'s run and save ``fig``."""
    machine = result["machine"]
    title = ax.set_title if ax is not None else fig.suptitle
    title(f"{machine['date_utc'][:10]}, {machine['cpu']}, {machine['cpu_count']} cores, load "
          f"{result['load_before']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    """Date (UTC), processor, cores, memory, Python, torch and diffusers versions, torch threads."""
    import importlib.metadata

    import torch

    from lora_core.environment import cpu_model

    versions = {}
    for name in ("torch", "diffusers", "peft", "accelerate"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "memory_gib": memory_gib(), "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(), **versions}


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size (``VmHWM`` in ``/proc/self/status``), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def write_result(name: str, payload: dict[str, Any], load_before: float | None) -> Path:
    """``payload`` with the machine and the load before and after, as ``results/<name>.json``."""
    from lora_core.io import atomic_write_json

    record = {"benchmark": name, "machine": machine(), "load_before": load_before, "load_after": load_average(),
              **payload}
    return atomic_write_json(RESULTS_DIR / f"{name}.json", record)
