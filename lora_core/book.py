"""The book runner: execute every notebook with papermill, then build the HTML book.

Each jupytext notebook ``notebooks/<name>.py`` (percent format) listed in ``book/_toc.yml``
as ``book/notebooks/<name>`` is converted to ``.ipynb`` with a kernelspec, checked against
its ``parameters`` cell, executed in the chosen profile and written, atomically, to
``book/notebooks/<name>.ipynb``; then jupyter-book 1.x builds ``_build/html``. papermill's
injected-parameters cell stays in the executed notebook but is tagged ``remove-cell``, so no
machine-specific value (the runner's absolute ``executed_dir``) reaches a page.

Chapters execute side by side, as many at once as the machine has cores for the thread policy's
threads per kernel (:func:`default_jobs`; ``--jobs`` overrides): each kernel computes with one
thread, so one chapter at a time would leave the second core of a 2-core machine idle. A kernel
trains its runs on its share of the cores (``LORA_CORE_TRAIN_PROCESSES``, :mod:`lora_core.train_pool`):
one run at a time while two chapters execute on two cores, two when one executes alone, and
more once a core falls idle because no chapter is left to start (:mod:`lora_core.core_slots`). Chapters
that ask for the same training run take turns on it (:func:`lora_core.runs.run_lock`); the
chapters in :data:`READS_EARLIER_CHAPTERS` start only when every chapter before them has finished.
Each chapter's numbers do not depend on the order: runs are seeded and reused by content.

papermill itself only warns about a parameter that the notebook does not define; this runner
refuses it and lists the valid ones. A failing notebook stops the build and names the
notebook and the cell.

Command line (``make book`` runs the first)::

    python -m lora_core.book --profile tiny
    python -m lora_core.book --profile smoke --only 00_setup -p n_samples 4 --no-build

>>> parse_overrides([["n_samples", "4"], ["title", "hello"], ["lr", "1e-4"]])
{'n_samples': 4, 'title': 'hello', 'lr': 0.0001}
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lora_core import profiling
from lora_core.config import load_yaml
from lora_core.core_slots import held_slot, slot_folder
from lora_core.io import atomic_folder, atomic_path, atomic_write_json
from lora_core.paths import REPO_ROOT
from lora_core.profiles import PROFILES
from lora_core.threads import children_follow_policy, kernels_share_cores, side_by_side, usable_cores

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
EXECUTED_DIR = BOOK_DIR / "notebooks"
TIMINGS_FILE = EXECUTED_DIR / "_timings.json"
# Files chapters write for the built book to serve as they are (the study kit of chapter 7):
# _config.yml's html_extra_path, relative to the book's root
EXTRA_DIR = Path("book") / "notebooks" / "_extra"
# MathJax 3 from npm (package.json), served from the built book itself so math shows offline
# (_config.yml's mathjax_path): the bundle and the parts it loads on demand.
MATHJAX_SOURCE = REPO_ROOT / "node_modules" / "mathjax" / "es5"
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "ui", "a11y")
KERNEL_NAME = "python3"
# Parameters the runner itself provides to the notebooks that declare them (machine-specific:
# never recorded as a chapter's parameters, so re-run commands do not carry them).
RUNNER_PARAMETERS = ("executed_dir",)
# Chapters that read what the chapters before them wrote (executed notebooks, timings, runs)
READS_EARLIER_CHAPTERS = ("09_claims", "99_appendix")
# Minutes each chapter took in the last fresh tiny build (at d58357d, two at a time): side by
# side, chapters start longest first, so that short ones fill the end instead of a long one
# running alone (a chapter not listed starts last). Only the build's elapsed time depends on it.
CHAPTER_MINUTES = {"00_setup": 0.4, "01_style_benchmark": 18.2, "02_rank_lr": 15.8, "03_methods": 20.3,
                   "04_style_mixing": 4.4, "05_character_ia3": 12.0, "06_kohya_character": 9.8,
                   "07_lora_vs_ti": 7.3, "08_rank_memorisation": 15.8}
# Chapters that cannot take a core another chapter left idle (their work runs in their own process:
# chapter 4 generates there, chapter 7 times its runs one at a time). They start before the others:
# at d58357d chapter 7 started last among the long ones and ran 2.4 min alone at the end of the book.
ONE_PROCESS_CHAPTERS = ("00_setup", "04_style_mixing", "07_lora_vs_ti")


class NotebookError(RuntimeError):
    """A notebook failed, or was asked for with parameters it does not define."""


@dataclass(frozen=True)
class NotebookRun:
    name: str
    output: Path
    wall_seconds: float
    parameters: dict[str, Any]


def toc_notebooks(toc_path: Path = BOOK_DIR / "_toc.yml") -> list[str]:
    """Names of the notebooks the table of contents expects, in book order."""
    def entries(node: Any):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                yield node["file"]
            for value in node.values():
                yield from entries(value)
        elif isinstance(node, list):
            for item in node:
                yield from entries(item)

    toc = yaml.safe_load(toc_path.read_text())
    files = [toc.get("root", "")] + list(entries(toc))
    prefix = "book/notebooks/"
    return [f[len(prefix):] for f in files if f.startswith(prefix)]


def parse_overrides(pairs: list[list[str]]) -> dict[str, Any]:
    """``-p key value`` pairs; values are parsed as YAML (numbers, booleans, lists), as papermill
    does, with ``1e-4`` read as a float."""
    return {key: load_yaml(value) for key, value in pairs}


def notebook_parameters(source: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its cell tagged ``parameters``, with their defaults."""
    import papermill

    ipynb = _to_ipynb(source, Path(tempfile.gettempdir()))
    try:
        params = papermill.inspect_notebook(str(ipynb))
    finally:
        ipynb.unlink(missing_ok=True)
    if not params:
        raise NotebookError(f"{source}: no cell tagged 'parameters' (papermill would inject values "
                            "above the notebook's own assignments, which would then win)")
    return {name: spec["default"] for name, spec in params.items()}


def check_parameters(source: Path, parameters: dict[str, Any]) -> None:
    """Refuse parameters the notebook does not define, naming the valid ones."""
    valid = notebook_parameters(source)
    unknown = sorted(set(parameters) - set(valid))
    if unknown:
        raise NotebookError(f"{source.name}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(unknown)}. Valid parameters: {', '.join(valid)}")
    profile = parameters.get("profile")
    if profile is not None and profile not in PROFILES:
        raise NotebookError(f"{source.name}: unknown profile {profile!r}. Valid profiles: {', '.join(PROFILES)}")


def _to_ipynb(source: Path, folder: Path) -> Path:
    """jupytext percent-format ``.py`` -> ``.ipynb`` with a python3 kernelspec (jupytext writes none)."""
    import jupytext

    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f".{source.stem}.{os.getpid()}.input.ipynb"
    jupytext.write(notebook, target, fmt="ipynb")
    return target


def execute_notebook(name: str, parameters: dict[str, Any], output_dir: Path = EXECUTED_DIR,
                     notebook_dir: Path = NOTEBOOK_DIR) -> NotebookRun:
    """Execute ``notebooks/<name>.py`` with ``parameters`` into ``output_dir/<name>.ipynb``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebook_dir / f"{name}.py"
    if not source.exists():
        raise NotebookError(f"{source}: no such notebook (listed in book/_toc.yml)")
    check_parameters(source, parameters)
    output = output_dir / f"{name}.ipynb"
    ipynb = _to_ipynb(source, output_dir)
    start = time.perf_counter()
    try:
        with atomic_path(output) as tmp:
            try:
                papermill.execute_notebook(
                    str(ipynb), str(tmp), parameters=parameters, kernel_name=KERNEL_NAME,
                    cwd=str(REPO_ROOT), progress_bar=False, log_output=False)
            except PapermillExecutionError as error:
                raise NotebookError(
                    f"notebook {source.name} failed in cell {error.cell_index} "
                    f"(execution count {error.exec_count}): {error.ename}: {error.evalue}\n"
                    f"--- cell source ---\n{error.source}") from None
            remove_injected_cell_from_page(tmp)
    finally:
        ipynb.unlink(missing_ok=True)
    return NotebookRun(name, output, time.perf_counter() - start, parameters)


def remove_injected_cell_from_page(path: Path) -> None:
    """Tag papermill's ``injected-parameters`` cell of the notebook at ``path`` ``remove-cell``
    (jupyter-book leaves it off the page; the notebook keeps it as a record of the run)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(notebook, path)


def record_timings(runs: list[NotebookRun], profile: str, timings_file: Path = TIMINGS_FILE) -> None:
    """Merge per-notebook wall times into ``book/notebooks/_timings.json`` for the appendix.

    ``wall_seconds`` is the last execution; ``longest_wall_seconds`` the longest one recorded with
    the same profile and parameters (usually the execution that trained the runs a re-execution
    reuses), reset when either changes. :data:`RUNNER_PARAMETERS` are not recorded.
    """
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for run in runs:
        seconds = round(run.wall_seconds, 1)
        parameters = {key: value for key, value in run.parameters.items() if key not in RUNNER_PARAMETERS}
        previous = timings.get(run.name, {})
        if previous.get("profile") == profile and previous.get("parameters") == parameters:
            longest = max(seconds, previous.get("longest_wall_seconds", previous["wall_seconds"]))
        else:
            longest = seconds
        timings[run.name] = {"wall_seconds": seconds, "longest_wall_seconds": longest, "profile": profile,
                             "parameters": parameters,
                             "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(timings_file, timings)


def build_html(root: Path = REPO_ROOT, strict: bool = True) -> Path:
    """``jupyter-book build`` of ``root`` with its ``_config.yml`` and ``book/_toc.yml``.

    Warnings are errors (``-W``), as QuantEcon's books build: a broken reference or a missing
    page fails the build instead of shipping.
    """
    (root / EXTRA_DIR).mkdir(parents=True, exist_ok=True)  # Sphinx warns (an error here) about a missing extra path
    stage_mathjax(root / EXTRA_DIR / "mathjax")
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root),
               "--config", str(root / "_config.yml"), "--toc", str(root / "book" / "_toc.yml")]
    if strict:
        command += ["-W", "--keep-going"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise NotebookError(f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return root / "_build" / "html" / "index.html"


def stage_mathjax(target: Path, source: Path = MATHJAX_SOURCE) -> None:
    """Copy :data:`MATHJAX_PARTS` of ``source`` to ``target`` (once: kept while its bundle is the same)."""
    bundle = source / MATHJAX_PARTS[0]
    if not bundle.is_file():
        raise NotebookError(f"{bundle} is missing: the book serves MathJax from node_modules; run `make setup`")
    if (target / MATHJAX_PARTS[0]).is_file() and filecmp.cmp(bundle, target / MATHJAX_PARTS[0], shallow=False):
        return
    with atomic_folder(target) as staging:
        for part in MATHJAX_PARTS:
            copy = shutil.copytree if (source / part).is_dir() else shutil.copyfile
            (staging / part).parent.mkdir(parents=True, exist_ok=True)
            copy(source / part, staging / part)


def stage_book(root: Path) -> None:
    """Copy the book's sources (config, toc, prose pages) to ``root`` for a build elsewhere; the
    shipped models they include and the package (whose Sphinx extension the config loads from the
    book's root) are linked, not copied."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO_ROOT / "_config.yml", root / "_config.yml")
    shutil.copytree(BOOK_DIR, root / "book", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("notebooks"))
    # models: book/data.md includes models/tiny-sd/MODEL_CARD.md and its figures; lora_core: the
    # config's Sphinx extension (lora_core.pairing)
    for name in ("models", "lora_core"):
        if not (root / name).exists():
            (root / name).symlink_to(REPO_ROOT / name, target_is_directory=True)


def run_book(profile: str, overrides: dict[str, Any], only: list[str] | None = None,
             build: bool = True, root: Path = REPO_ROOT, jobs: int = 0) -> list[NotebookRun]:
    """Execute the book's notebooks (all, or ``only``) in ``profile``, ``jobs`` at a time (0: as
    many as :func:`default_jobs`), then build the HTML.

    Each notebook receives the overrides it declares; a name that no notebook declares is refused.
    With ``root`` other than the repository, the book is staged and built there (the tests build
    the smoke book in a temporary folder so that they never overwrite ``make book``'s output).
    Notebooks always run with the repository as working directory, sharing its ``runs/``.
    """
    if profile not in PROFILES:
        raise NotebookError(f"unknown profile {profile!r}. Valid profiles: {', '.join(PROFILES)}")
    names = toc_notebooks()
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise NotebookError(f"not in book/_toc.yml: {', '.join(missing)}. Notebooks: {', '.join(names)}")
        names = [n for n in names if n in only]
    declared = {name: notebook_parameters(NOTEBOOK_DIR / f"{name}.py") for name in names}
    unused = sorted(set(overrides) - set().union(*declared.values()))
    if unused:
        raise NotebookError(f"no notebook defines {', '.join(unused)}. Valid parameters: "
                            + "; ".join(f"{n}: {', '.join(p)}" for n, p in declared.items()))
    if root != REPO_ROOT:
        stage_book(root)
    executed_dir = root / "book" / "notebooks"
    # The runner's own facts reach notebooks that declare them (the appendix reads the timings and
    # profile of this build, wherever the build is staged).
    provided = {"profile": profile, "executed_dir": str(executed_dir)}
    parameters = {name: {key: value for key, value in {**provided, **overrides}.items()
                         if key in declared[name] or key == "profile"} for name in names}
    runs = []
    with children_follow_policy() as threads:  # every kernel computes with the policy's threads
        jobs = jobs or default_jobs(threads)
        print(f"[book] {len(names)} notebooks ({profile}), {jobs} at a time, {threads} thread"
              f"{'s' if threads > 1 else ''} each", flush=True)
        for wave in execution_waves(names):
            runs += execute_wave(wave, parameters, executed_dir, profile, jobs)
    if build:
        index = build_html(root)
        print(f"[book] HTML: {index}")
    return runs


def default_jobs(threads: int) -> int:
    """Notebooks executed at once: the cores this process may use over each kernel's threads."""
    return max(1, usable_cores() // threads)


def execution_waves(names: list[str]) -> list[list[str]]:
    """``names`` in book order, cut into waves that execute one after another: each chapter of
    :data:`READS_EARLIER_CHAPTERS` is a wave of its own, after every chapter before it.

    >>> execution_waves(["00_setup", "01_a", "02_b", "09_claims", "99_appendix"])
    [['00_setup', '01_a', '02_b'], ['09_claims'], ['99_appendix']]
    """
    waves: list[list[str]] = [[]]
    for name in names:
        if name in READS_EARLIER_CHAPTERS:
            waves += [[name], []]
        else:
            waves[-1].append(name)
    return [wave for wave in waves if wave]


def execute_wave(names: list[str], parameters: dict[str, dict[str, Any]], executed_dir: Path, profile: str,
                 jobs: int, notebook_dir: Path = NOTEBOOK_DIR) -> list[NotebookRun]:
    """Execute ``names``, ``jobs`` at a time (in :func:`start_order`), each in its own
    process (one at a time: in this one, in book order), its kernel training on its share of the
    cores; records each as it finishes and returns them in book order. The
    first failure cancels the notebooks not yet started, waits for the running ones and is raised."""
    with kernels_share_cores(min(jobs, len(names))):
        if jobs == 1 or len(names) == 1:
            return [execute_profiled(name, parameters[name], executed_dir, profile, notebook_dir) for name in names]
        return execute_side_by_side(names, parameters, executed_dir, profile, jobs, notebook_dir)


def execute_side_by_side(names: list[str], parameters: dict[str, dict[str, Any]], executed_dir: Path,
                         profile: str, jobs: int, notebook_dir: Path) -> list[NotebookRun]:
    """:func:`execute_wave` for two or more notebooks, each in a spawned process."""
    runs = {}
    with slot_folder(jobs, len(names)):   # a core no chapter holds any more goes to a kernel still working
        for _, (run, load_before) in side_by_side(execute_with_phases, [(name, parameters[name], executed_dir,
                                                                         notebook_dir) for name in start_order(names)],
                                                  jobs):
            runs[run.name] = record_run(run, load_before, executed_dir, profile)
    return [runs[name] for name in names]


def start_order(names: list[str]) -> list[str]:
    """``names`` in the order they start side by side: :data:`ONE_PROCESS_CHAPTERS` first, so
    that the chapters which can take an idle core fill the end; within each group longest first
    by :data:`CHAPTER_MINUTES`, book order among equals.

    >>> start_order(["00_setup", "01_style_benchmark", "03_methods", "07_lora_vs_ti", "50_new"])
    ['07_lora_vs_ti', '00_setup', '03_methods', '01_style_benchmark', '50_new']
    """
    return sorted(names, key=lambda name: (name not in ONE_PROCESS_CHAPTERS, -CHAPTER_MINUTES.get(name, 0.0)))


def execute_with_phases(name: str, parameters: dict[str, Any], executed_dir: Path,
                        notebook_dir: Path = NOTEBOOK_DIR) -> tuple[NotebookRun, float | None]:
    """:func:`execute_notebook` with its kernel's phases written beside the executed notebooks
    (consumed by :func:`record_run`); returns the run and the load before it."""
    with held_slot(name):   # side by side: this chapter's core, until it ends
        print(f"[book] {name} ...", flush=True)
        load_before = profiling.load_average()
        with profiling.kernel_phases_file(phases_path(executed_dir, name)):
            run = execute_notebook(name, parameters, executed_dir, notebook_dir)
    return run, load_before


def phases_path(executed_dir: Path, name: str) -> Path:
    """Where ``name``'s kernel writes its phases for the runner (removed once recorded)."""
    return executed_dir / f".{name}.phases.json"


def execute_profiled(name: str, parameters: dict[str, Any], executed_dir: Path, profile: str,
                     notebook_dir: Path = NOTEBOOK_DIR) -> NotebookRun:
    """:func:`execute_with_phases` in this process, then :func:`record_run`."""
    return record_run(*execute_with_phases(name, parameters, executed_dir, notebook_dir), executed_dir, profile)


def record_run(run: NotebookRun, load_before: float | None, executed_dir: Path, profile: str) -> NotebookRun:
    """The run's wall time into ``_timings.json`` and the seconds its kernel spent per phase
    (:mod:`lora_core.profiling`), with the machine's load, into ``_profile.json``, both beside the
    executed notebooks; only the runner's own process writes them."""
    name = run.name
    record_timings([run], profile, executed_dir / TIMINGS_FILE.name)
    entry = profiling.record_notebook_profile(executed_dir / profiling.PROFILE_FILE_NAME, name, profile,
                                              run.wall_seconds, phases_path(executed_dir, name), load_before)
    busiest = sorted(entry["share"].items(), key=lambda item: -item[1])[:3]
    print(f"[book] {name} done in {run.wall_seconds:.1f} s ("
          + ", ".join(f"{phase} {share:.0%}" for phase, share in busiest)
          + f"; load {load_before} -> {entry['load_after']})", flush=True)
    return run


def command_line_help() -> str:
    """The profiles and every notebook's parameters with default and comment, read from the
    ``parameters`` cells themselves (nothing executes), for ``--help``."""
    from lora_core.config import help_entry

    lines = ["profiles (--profile):"]
    lines += [help_entry(f"  {name}", profile.description) for name, profile in PROFILES.items()]
    lines.append("\nnotebook parameters (-p NAME VALUE; each notebook receives the ones it declares):")
    for name in toc_notebooks():
        lines.append(f"  {name}:")
        lines += [help_entry(f"    {key}={value}", comment)
                  for key, value, comment in parameters_cell(NOTEBOOK_DIR / f"{name}.py") if key != "profile"]
    return "\n".join(lines)


def parameters_cell(source: Path) -> list[tuple[str, str, str]]:
    """(name, default as ``-p`` writes it, comment after it) of each assignment in the notebook's
    ``parameters`` cell."""
    import ast

    import jupytext

    from lora_core.config import value_text

    cells = [c.source for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", [])]
    code = cells[0] if cells else ""
    lines, entries = code.splitlines(), []
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = value_text(ast.literal_eval(node.value))
            except ValueError:   # an expression, not a literal: show it as written
                value = ast.get_source_segment(code, node.value)
            comment = lines[node.end_lineno - 1][node.end_col_offset:].strip().removeprefix("#").strip()
            entries.append((node.targets[0].id, value, comment))
    return entries


def main(argv: list[str] | None = None) -> int:
    from lora_core.cli import command_parser, run_command

    parser = command_parser("python -m lora_core.book", __doc__.split("\n\n")[0], command_line_help)
    parser.add_argument("--profile", default="tiny", choices=list(PROFILES))
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a notebook parameter (refused if a notebook does not define it)")
    parser.add_argument("--only", nargs="+", help="execute only these notebooks (names without .py)")
    parser.add_argument("--no-build", action="store_true", help="execute notebooks, skip the HTML build")
    parser.add_argument("--jobs", type=int, default=0, help="notebooks executed at once (default: the cores "
                        "over the threads per kernel, LORA_CORE_THREADS)")

    def command(args) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if args.jobs < 0:
            raise NotebookError(f"--jobs {args.jobs}: expected a positive number of notebooks (0: the default)")
        run_book(args.profile, parse_overrides(args.parameter), args.only, build=not args.no_build, jobs=args.jobs)

    return run_command(command, parser, argv, failures=(NotebookError,))


if __name__ == "__main__":
    sys.exit(main())
