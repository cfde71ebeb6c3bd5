"""Each chapter executed alone in the tiny profile, on its own fresh clone of this checkout.

What a reader pays to re-execute one chapter (``python -m lora_core.book --only <chapter>``) on a
fresh machine: nothing cached, the chapter's kernel alone on the machine, so it trains its runs
as many at a time as there are cores (``lora_core.train_pool``). Inside the whole book two
chapters execute at once and each trains one run at a time, so there a chapter's wall time is
longer and the book's elapsed time is what counts (the appendix). Chapters run one after another;
every clone borrows this checkout's ``.venv`` (and ``node_modules``), builds the toy world and
executes its chapter with ``--no-build``. Seconds per phase come from the runner's profile.

    .venv/bin/python benchmarks/bench_chapters.py 05_character_ia3 06_kohya_character [--work /tmp/alone]

Writes ``benchmarks/results/chapters.json`` (the rows of chapters not executed this time are kept)
and ``chapters.png``. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from _record import REPO, RESULTS_DIR, load_average, save_figure, write_result

PHASE_GROUPS = ("training", "generation", "features", "other")
# the clone's own lora_core, not this checkout's (which _record puts on PYTHONPATH for benchmarks)
CLONE_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def fresh_clone(chapter: str, work: Path) -> Path:
    """A fresh clone of this checkout for ``chapter``, with the environment linked and the toy world built."""
    clone = work / chapter
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(REPO / ".venv")
    if (REPO / "node_modules").is_dir():
        shutil.copytree(REPO / "node_modules", clone / "node_modules", symlinks=True)
    subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "lora_core.toy", "build"], cwd=clone, env=CLONE_ENV,
                   check=True, capture_output=True)
    return clone


def execute_alone(chapter: str, clone: Path) -> dict:
    """Execute ``chapter`` in ``clone`` (tiny, no HTML); its row."""
    load_before, started = load_average(), time.perf_counter()
    with open(clone / "book.log", "w") as log:
        status = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "lora_core.book", "--profile", "tiny",
                                 "--only", chapter, "--no-build"], cwd=clone, env=CLONE_ENV, stdout=log,
                                stderr=subprocess.STDOUT).returncode
    return chapter_row(chapter, clone, status, time.perf_counter() - started, load_before)


def chapter_row(chapter: str, clone: Path, status: int, elapsed_s: float, load_before: float | None) -> dict:
    """The chapter's elapsed time, its kernel's seconds per phase group and the load around it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True).stdout.strip()
    profile_file = clone / "book" / "notebooks" / "_profile.json"
    entry = json.loads(profile_file.read_text()).get(chapter, {}) if status == 0 and profile_file.exists() else {}
    seconds = entry.get("seconds", {})
    groups = {group: 0.0 for group in PHASE_GROUPS}
    for phase, value in seconds.items():
        group = next((g for g in PHASE_GROUPS[:-1] if phase.startswith(g)), "other")
        groups[group] += value
    return {"chapter": chapter, "commit": commit, "status": status, "elapsed_s": round(elapsed_s, 1),
            "wall_s": entry.get("wall_seconds"), **{f"{g}_s": round(v, 1) for g, v in groups.items()},
            "load_before": load_before, "load_after": entry.get("load_after", load_average())}


def figure(result: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if row["status"] == 0]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    left = [0.0] * len(rows)
    for group in PHASE_GROUPS:
        minutes = [row[f"{group}_s"] / 60 for row in rows]
        ax.barh([row["chapter"] for row in rows], minutes, left=left, label=group)
        left = [a + b for a, b in zip(left, minutes)]
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.35)  # room for the legend beside the bars
    ax.set_xlabel("minutes, chapter executed alone (tiny, fresh clone)")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, ax, result, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="+", help="notebook names, e.g. 05_character_ia3")
    parser.add_argument("--work", type=Path, default=Path("/tmp/alone"), help="where the clones go")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before, rows = load_average(), []
    for chapter in args.chapters:
        rows.append(execute_alone(chapter, fresh_clone(chapter, args.work)))
        print(rows[-1], flush=True)
    earlier = RESULTS_DIR / "chapters.json"
    kept = [row for row in (json.loads(earlier.read_text())["rows"] if earlier.exists() else [])
            if row["chapter"] not in args.chapters]   # chapters not executed now keep their row (and its commit)
    result_path = write_result("chapters", {"rows": kept + rows, "settings": {"profile": "tiny", "fresh_clone": True}},
                               load_before)
    figure(json.loads(result_path.read_text()), RESULTS_DIR / "chapters.png")


if __name__ == "__main__":
    main()
