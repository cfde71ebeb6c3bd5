"""Each chapter executed alone in the tiny profile, on its own fresh clone of this checkout.

What a reader pays to re-execute one chapter (``python -m lora_core.book --only <chapter>``) on a
fresh machine: nothing cached, the chapter's kernel alone on the machine, so it trains its runs
as many at a time as there are cores (``lora_core.train_pool``). Inside the whole book two
chapters execute at once and each trains one run at a time, so there a chapter's wall time is
longer and the book's elapsed time is what counts (the appendix). Chapters run one after another;
every clone borrows this checkout's ``.venv`` (and ``node_modules``), builds the toy world and
executes its chapter with ``--no-build``. Seconds per phase come from the runner's profile.
With ``--together LABEL`` the chapters execute together on one fresh clone, as the book runner
executes them (side by side, in ``lora_core.book.start_order``): one row, its elapsed time, and
its kernels' seconds per phase summed (more than the elapsed time, since two kernels compute at
once). Each row also has the CPU seconds of the runner's whole process tree and the elapsed time
over those seconds spread on every core: 1.0 means no core sat idle. That ratio does not move with
the VM's speed, which varied by a fifth within one day here, so it compares packings across days.

    .venv/bin/python benchmarks/bench_chapters.py 05_character_ia3 06_kohya_character [--work /tmp/alone]
    .venv/bin/python benchmarks/bench_chapters.py 00_setup 01_style_benchmark 02_rank_lr 03_methods \
        04_style_mixing --together "part I"

Writes ``benchmarks/results/chapters.json`` (the rows of chapters not executed this time are kept)
and ``chapters.png``. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from _record import REPO, RESULTS_DIR, load_average, save_figure, write_result

PHASE_GROUPS = ("training", "generation", "features", "other")
# the clone's own lora_core, not this checkout's (which _record puts on PYTHONPATH for benchmarks)
CLONE_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def fresh_clone(name: str, work: Path) -> Path:
    """A fresh clone of this checkout in ``work/name``, with the environment linked and the toy world built."""
    clone = work / name
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(REPO / ".venv")
    if (REPO / "node_modules").is_dir():
        shutil.copytree(REPO / "node_modules", clone / "node_modules", symlinks=True)
    subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "lora_core.toy", "build"], cwd=clone, env=CLONE_ENV,
                   check=True, capture_output=True)
    return clone


def execute(chapters: list[str], clone: Path, label: str) -> dict:
    """Execute ``chapters`` in ``clone`` (tiny, no HTML; several side by side, as the book runner
    does); their row, named ``label``."""
    load_before, started, cpu_before = load_average(), time.perf_counter(), children_cpu_s()
    with open(clone / "book.log", "w") as log:
        status = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "lora_core.book", "--profile", "tiny",
                                 "--only", *chapters, "--no-build"], cwd=clone, env=CLONE_ENV, stdout=log,
                                stderr=subprocess.STDOUT).returncode
    row = chapters_row(label, chapters, clone, status, time.perf_counter() - started, load_before)
    return {**row, **packing(row["elapsed_s"], children_cpu_s() - cpu_before)}


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every finished child process of this one and their own
    children: the runner, its kernels and their child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def packing(elapsed_s: float, cpu_s: float, cores: int | None = None) -> dict:
    """The CPU seconds and how well they filled the cores: elapsed time over the CPU seconds spread
    evenly on every core (1.0: no core ever idle). It does not move with the machine's speed, as
    the elapsed time does.

    >>> packing(110.0, 200.0, cores=2)
    {'cpu_s': 200.0, 'elapsed_over_cpu_per_core': 1.1}
    """
    from lora_core.threads import usable_cores

    cores = cores or usable_cores()
    return {"cpu_s": round(cpu_s, 1), "elapsed_over_cpu_per_core": round(elapsed_s / (cpu_s / cores), 3)}


def chapters_row(label: str, chapters: list[str], clone: Path, status: int, elapsed_s: float,
                 load_before: float | None) -> dict:
    """The elapsed time, the kernels' seconds per phase group and the load around them (one
    chapter: its own wall time too)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True).stdout.strip()
    profile_file = clone / "book" / "notebooks" / "_profile.json"
    profiles = json.loads(profile_file.read_text()) if status == 0 and profile_file.exists() else {}
    entries = [profiles.get(chapter, {}) for chapter in chapters]
    groups = {group: 0.0 for group in PHASE_GROUPS}
    for phase, value in ((p, v) for entry in entries for p, v in entry.get("seconds", {}).items()):
        group = next((g for g in PHASE_GROUPS[:-1] if phase.startswith(g)), "other")
        groups[group] += value
    row = {"chapter": label, "commit": commit, "status": status, "elapsed_s": round(elapsed_s, 1),
           "wall_s": entries[0].get("wall_seconds") if len(chapters) == 1 else None,
           **{f"{g}_s": round(v, 1) for g, v in groups.items()},
           "load_before": load_before, "load_after": entries[-1].get("load_after", load_average())}
    return row if len(chapters) == 1 else {**row, "chapters": chapters}


def figure(result: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if row["status"] == 0]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    left = [0.0] * len(rows)
    for group in PHASE_GROUPS:
        minutes = [row[f"{group}_s"] / 60 for row in rows]
        ax.barh([row["chapter"] for row in rows], minutes, left=left, label=group)
        left = [a + b for a, b in zip(left, minutes)]
    together = [(i, row["elapsed_s"] / 60) for i, row in enumerate(rows) if "chapters" in row]
    if together:
        ax.plot([m for _, m in together], [i for i, _ in together], "k|", markersize=16, label="elapsed (together)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.35)  # room for the legend beside the bars
    ax.set_xlabel("minutes of kernel time: a chapter alone, or chapters together (tiny, fresh clone)")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, ax, result, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="+", help="notebook names, e.g. 05_character_ia3")
    parser.add_argument("--work", type=Path, default=Path("/tmp/alone"), help="where the clones go")
    parser.add_argument("--together", metavar="LABEL", help="execute the chapters together on one clone: one row")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    groups = [(args.together, args.chapters)] if args.together else [(chapter, [chapter]) for chapter in args.chapters]
    load_before, rows = load_average(), []
    for label, chapters in groups:
        rows.append(execute(chapters, fresh_clone(label.replace(" ", "_"), args.work), label))
        print(rows[-1], flush=True)
    earlier = RESULTS_DIR / "chapters.json"
    labels = {label for label, _ in groups}
    kept = [row for row in (json.loads(earlier.read_text())["rows"] if earlier.exists() else [])
            if row["chapter"] not in labels]   # rows not executed now are kept (with their commit)
    result_path = write_result("chapters", {"rows": kept + rows, "settings": {"profile": "tiny", "fresh_clone": True}},
                               load_before)
    figure(json.loads(result_path.read_text()), RESULTS_DIR / "chapters.png")


if __name__ == "__main__":
    main()
