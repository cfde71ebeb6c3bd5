"""Run directories and records: one folder per (method, config hash), reused when finished.

A run writes ``<root>/<method>-<confighash>/``::

    config.json          the TrainConfig (its hash names the folder)
    metrics.jsonl        one row per optimizer step: step, epoch, loss, lr, lr/<group>, s_per_it,
                         val_loss on validation steps, optimizer_step_skipped (true) on a step
                         whose update the fp16 GradScaler skipped (inf/nan gradients)
    summary.json         written last: wall time, steps/s, peak memory, trainable params, file
                         sizes, library versions, device, seed, final losses, method facts
    state/training_state.pt   latest full training state (exact resume); state/ goes when finished
    checkpoints/step-<N>/     adapter-only files every N steps
    exports/                  the finished adapter's files (diffusers, kohya layouts)

The root is resolved against the project root (:func:`lora_core.paths.resolve`), not the
working directory. Checkpoint and export folders are written whole (``io.atomic_folder``), so
such a folder exists only with all its files; a kill can leave temporaries, which
:func:`remove_debris` clears before the run is written to again.

A folder with ``summary.json`` and every file it lists is a finished run; ``load_run`` reads it
back. The config hash covers the config only (the base is a source string, the data a folder),
so the summary also records fingerprints of the inputs themselves; ``lora_core.train`` reuses a
finished run only when :func:`reuse_blockers` finds nothing changed or missing.

>>> import tempfile
>>> record = RunRecord(Path(tempfile.mkdtemp()), {"steps": 3}, {})
>>> record.finished
False
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from lora_core.io import atomic_write_json, atomic_write_text, exclusive_lock, remove_temporaries
from lora_core.paths import resolve

DEFAULT_RUNS_ROOT = resolve(os.environ.get("LSL_RUNS_ROOT", "runs"))
STATE_FILE = Path("state") / "training_state.pt"
# summary.json key -> the input it fingerprints (lora_core.train.fingerprint, models.base_fingerprint)
INPUT_FINGERPRINTS = {"data_fingerprint": "training images or captions",
                      "validation_fingerprint": "validation images or captions",
                      "base_fingerprint": "base model weights"}


@dataclass
class RunRecord:
    """A run's folder, its summary and its exported files (``{layout: path}``)."""

    run_dir: Path
    summary: dict[str, Any]
    exports: dict[str, Path] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").exists() and not missing_exports(self.run_dir, self.summary)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "config.json").read_text())

    def metrics(self) -> list[dict[str, Any]]:
        """Rows of ``metrics.jsonl`` (``pandas.DataFrame(record.metrics())`` for tables)."""
        return read_metrics(self.run_dir)


def run_dir_for(method: str, config_hash: str, root: str | Path | None = None) -> Path:
    """``<root>/<method>-<config hash>``, a relative ``root`` under the project root."""
    return resolve(root if root is not None else DEFAULT_RUNS_ROOT) / f"{method}-{config_hash}"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path | None]:
    """Hold ``run_dir``'s lock (:func:`lora_core.io.exclusive_lock` on
    ``<root>/.locks/<folder name>.lock``): processes that would train the same run (chapters
    executed side by side) take turns, so the first trains it and the others then find it finished
    and reuse it. Not taken inside a distributed launch (``WORLD_SIZE`` > 1), whose processes
    train one run together. Yields the lock file, or None when no lock was taken."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield None
        return
    with exclusive_lock(Path(run_dir).parent / ".locks" / f"{Path(run_dir).name}.lock") as lock_path:
        yield lock_path


def load_run(run_dir: str | Path) -> RunRecord:
    """The record of a finished run (FileNotFoundError naming the folder and what is missing
    otherwise: no summary.json, or an exported file the summary lists)."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a finished run (no summary.json)")
    summary = json.loads(summary_path.read_text())
    missing = missing_exports(run_dir, summary)
    if missing:
        raise FileNotFoundError(f"{run_dir}: not a finished run: {missing[0]}")
    exports = {layout: run_dir / rel for layout, rel in summary.get("exports", {}).items()}
    return RunRecord(run_dir, summary, exports)


def missing_exports(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """One line per exported file (or folder) that ``summary`` lists but ``run_dir`` lacks.

    >>> missing_exports(Path("/nonexistent"), {"exports": {"kohya": "exports/lora_kohya.safetensors"}})
    ['exported file exports/lora_kohya.safetensors is missing']
    """
    return [f"exported file {rel} is missing" for rel in summary.get("exports", {}).values()
            if not (Path(run_dir) / rel).exists()]


def reuse_blockers(run_dir: Path, current: dict[str, str | None]) -> list[str]:
    """Why the finished run in ``run_dir`` does not stand for its config now: exported files
    that are missing and inputs that changed (:func:`changed_inputs`). Empty: reuse it."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return missing_exports(run_dir, summary) + changed_inputs(summary, current)


def remove_debris(run_dir: Path) -> list[Path]:
    """Remove what a killed run left in ``run_dir``: temporary files and folders of atomic writes
    (a state cut short, a checkpoint or export folder being written), and the resume state of a
    run that finished (killed after its summary); returns what was removed."""
    removed = remove_temporaries(run_dir)
    state_dir = Path(run_dir) / STATE_FILE.parent
    if (Path(run_dir) / "summary.json").exists() and state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)  # every process of a distributed run may call this
        removed.append(state_dir)
    return removed


def changed_inputs(summary: dict[str, Any], current: dict[str, str | None]) -> list[str]:
    """What differs between a finished run's recorded input fingerprints and ``current`` (keys of
    ``INPUT_FINGERPRINTS``); a fingerprint the summary lacks (a run recorded before it existed)
    counts as unknown, hence changed. Empty: the run is still what its config would train.

    >>> recorded = {"data_fingerprint": "0a1b2c3d4e5f", "base_fingerprint": "9f8e7d6c5b4a3f2e"}
    >>> changed_inputs(recorded, {"data_fingerprint": "0a1b2c3d4e5f", "base_fingerprint": "9f8e7d6c5b4a3f2e"})
    []
    >>> changed_inputs(recorded, {"data_fingerprint": "0a1b2c3d4e5f", "base_fingerprint": "1111aaaa2222bbbb"})
    ['base model weights changed (9f8e7d6c5b4a -> 1111aaaa2222)']
    >>> changed_inputs({"data_fingerprint": "0a1b2c3d4e5f"}, {"base_fingerprint": "1111aaaa2222bbbb"})
    ['base model weights unknown (summary.json has no base_fingerprint: an older run)']
    """
    reasons = []
    for key, value in current.items():
        if key not in summary:
            reasons.append(f"{INPUT_FINGERPRINTS[key]} unknown (summary.json has no {key}: an older run)")
        elif summary[key] != value:
            reasons.append(f"{INPUT_FINGERPRINTS[key]} changed ({_short(summary[key])} -> {_short(value)})")
    return reasons


def _short(fingerprint: str | None) -> str:
    return fingerprint[:12] if fingerprint else "none"


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` with ``rows`` (after a resume: exactly the checkpoint's log)."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    return atomic_write_json(run_dir / "summary.json", summary)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA peak allocated bytes on a GPU, else this process's peak resident set size."""
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    return {"peak_memory_bytes": int(rss if sys.platform == "darwin" else rss * 1024),
            "peak_memory_kind": "process_rss"}


def file_sizes(paths: dict[str, Path]) -> dict[str, int]:
    return {name: Path(path).stat().st_size for name, path in paths.items()}
