"""The reproducibility appendix, built from run records only.

Everything here reads what earlier chapters left behind, and works when none of them ran: the
run folders under ``runs/`` (``config.json``, ``summary.json``), the per-notebook wall times that
the book runner writes to ``book/notebooks/_timings.json`` and the seconds per phase to
``_profile.json`` (:mod:`lora_core.profiling`), the executed chapters (to tell which run each
chapter used, by its config hash), and the benchmarks' results in ``benchmarks/results``.
Nothing is trained or generated.

    result = run_appendix("tiny", runs_root="runs", executed_dir="book/notebooks")
    result.runs; result.versions; result.facts["n_runs"]

>>> rerun_commands("02_rank_lr", "tiny", {"n_seeds": 2})["book runner"]
'python -m lora_core.book --profile tiny --only 02_rank_lr -p n_seeds 2'
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from lora_core import runs
from lora_core.environment import LIBRARIES, environment_info
from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.paths import REPO_ROOT
from lora_core.profiles import Profile
from lora_core.profiling import OTHER, PROFILE_FILE_NAME

BENCHMARK_RESULTS = REPO_ROOT / "benchmarks" / "results"
GPU_BENCHMARKS = {"bench_gpu_unet": ("steps", "references"), "bench_gpu_peer": ("rows",), "bench_gpu_scaling": ("rows",)}
NO_GPU = ("No GPU was available in this build: the GPU benchmarks (benchmarks/bench_gpu_unet.py, bench_gpu_peer.py "
          "and bench_gpu_scaling.py) have not run, so steps per second, peak memory and model-FLOPs utilisation on "
          "SD v1.5's architecture remain to be measured; each runs with one command on a GPU machine.")
RUN_COLUMNS = ("method", "config_hash", "run_dir", "finished", "seed", "steps", "rank", "alpha",
               "learning_rate", "data", "wall_time_s", "trainable_params", "torch", "diffusers", "device")


def run_matches_profile(config: Mapping[str, Any], profile: Profile) -> bool:
    """A run belongs to a profile when it trained on that profile's base model at its resolution.

    >>> from lora_core.profiles import get_profile
    >>> run_matches_profile({"base_model": "tiny-random", "data": {"resolution": 32}}, get_profile("smoke"))
    True
    """
    data = config.get("data") or {}
    return config.get("base_model") == profile.base_model and data.get("resolution") == profile.resolution


def _run_row(run_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    options = config.get("options") or {}
    versions = summary.get("versions", {})
    return {
        "method": config.get("method", run_dir.name.split("-")[0]),
        "config_hash": run_dir.name.rsplit("-", 1)[-1], "run_dir": str(run_dir),
        "finished": summary_path.exists(), "seed": config.get("seed"),
        "steps": summary.get("steps", config.get("max_train_steps")),
        "rank": options.get("rank"), "alpha": options.get("alpha"),
        "learning_rate": config.get("learning_rate"), "data": (config.get("data") or {}).get("folder"),
        "wall_time_s": summary.get("wall_time_s"), "trainable_params": summary.get("trainable_params"),
        "torch": versions.get("torch"), "diffusers": versions.get("diffusers"), "device": summary.get("device"),
    }


def profile_runs(profile: Profile, runs_root: str | Path | None = None) -> pd.DataFrame:
    """One row per run folder of ``profile`` under ``runs_root`` (finished or not), sorted by method
    and folder name; an empty table with the same columns when there are none."""
    root = Path(runs_root if runs_root is not None else runs.DEFAULT_RUNS_ROOT)
    rows = []
    for run_dir in sorted(root.glob("*-*")) if root.is_dir() else []:
        config_path = run_dir / "config.json"
        if not config_path.exists():
            continue
        config = json.loads(config_path.read_text())
        if run_matches_profile(config, profile):
            rows.append(_run_row(run_dir, config))
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def chapters_using(config_hashes: list[str], executed_dir: str | Path) -> dict[str, list[str]]:
    """For each hash, the executed chapters (``<name>.ipynb`` in ``executed_dir``) whose text names it.

    Chapters print their run table with the hashes, so a hash in a chapter's saved outputs means
    the chapter used that run.
    """
    notebooks = {path.stem: path.read_text(encoding="utf-8")
                 for path in sorted(Path(executed_dir).glob("*.ipynb"))} if Path(executed_dir).is_dir() else {}
    return {h: [name for name, text in notebooks.items() if h in text] for h in config_hashes}


def runs_used_table(profile: Profile, runs_root: str | Path | None, executed_dir: str | Path) -> pd.DataFrame:
    """:func:`profile_runs` with a ``chapters`` column (comma-separated, '' when no chapter names it)."""
    table = profile_runs(profile, runs_root)
    used = chapters_using(list(table["config_hash"]), executed_dir)
    return table.assign(chapters=[", ".join(used[h]) for h in table["config_hash"]])


def version_table(run_table: pd.DataFrame, runs_root: str | Path | None = None,
                  current: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Library versions of this build beside the versions recorded by the finished runs.

    ``recorded in runs`` lists every distinct version found in the runs' summaries; ``agrees`` is
    False where a run was made with a different version (its numbers may then not reproduce).
    """
    current = dict(current if current is not None else environment_info())
    recorded: dict[str, set[str]] = {name: set() for name in LIBRARIES}
    for run_dir in run_table.loc[run_table["finished"], "run_dir"]:
        versions = json.loads((Path(run_dir) / "summary.json").read_text()).get("versions", {})
        for name in LIBRARIES:
            if name in versions:
                recorded[name].add(versions[name])
    rows = [{"library": name, "this build": current.get(name, "not installed"),
             "recorded in runs": ", ".join(sorted(recorded[name])) or "(no run)",
             "agrees": recorded[name] <= {current.get(name)}} for name in LIBRARIES]
    return pd.DataFrame(rows)


def hardware_table(device: str = "cpu") -> pd.DataFrame:
    """Python, platform, device, CPU count, torch threads and physical memory of this machine."""
    info = environment_info(device)
    keys = ("python", "platform", "device", "device_name", "cpu_count", "torch_threads")
    rows = [(key, info[key]) for key in keys]
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        rows.append(("memory_gib", f"{memory / 2**30:.1f}"))
    except (ValueError, OSError, AttributeError):  # not every platform exposes these sysconf names
        rows.append(("memory_gib", "unknown"))
    return pd.DataFrame(rows, columns=["item", "value"])


def notebook_timings(timings_file: str | Path) -> pd.DataFrame:
    """Per-notebook wall time (last, and longest with the same profile and parameters), profile,
    parameters and finish time from the runner's timings file."""
    path = Path(timings_file)
    timings = json.loads(path.read_text()) if path.exists() else {}
    rows = [{"notebook": name, "profile": entry.get("profile"), "wall_seconds": entry.get("wall_seconds"),
             "longest_wall_seconds": entry.get("longest_wall_seconds", entry.get("wall_seconds")),
             "parameters": json.dumps(entry.get("parameters", {}), sort_keys=True),
             "finished_utc": entry.get("finished_utc")} for name, entry in timings.items()]
    return pd.DataFrame(rows, columns=["notebook", "profile", "wall_seconds", "longest_wall_seconds", "parameters",
                                       "finished_utc"])


def _cli_value(value: Any) -> str:
    return shlex.quote(json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value))


def rerun_commands(notebook: str, profile: str, parameters: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Shell commands that re-run one chapter: through the book runner, and with plain papermill.

    >>> rerun_commands("04_style_mixing", "smoke")["papermill"].split(" && ")[1]
    'papermill -k python3 04_style_mixing.ipynb 04_style_mixing.out.ipynb -p profile smoke'
    """
    extra = {k: v for k, v in (parameters or {}).items() if k != "profile"}
    flags = "".join(f" -p {key} {_cli_value(value)}" for key, value in extra.items())
    converted = f"{notebook}.ipynb"
    return {
        "book runner": f"python -m lora_core.book --profile {profile} --only {notebook}{flags}",
        "papermill": (f"jupytext --to ipynb --set-kernel python3 -o {converted} notebooks/{notebook}.py && "
                      f"papermill -k python3 {converted} {notebook}.out.ipynb -p profile {profile}{flags}"),
    }


def elapsed_sentence(timings: pd.DataFrame, profile: str, own_name: str = "99_appendix") -> str:
    """How long the notebooks of ``profile`` (this appendix excepted) took from the first start to
    the last finish, beside the sum of their wall times: the runner executes chapters side by side,
    so the book's time is the first, not the second.

    >>> elapsed_sentence(pd.DataFrame({"notebook": ["a", "b"], "profile": ["tiny", "tiny"],
    ...     "wall_seconds": [600.0, 900.0], "finished_utc": ["2026-12-01T10:10:00Z", "2026-12-01T10:15:00Z"]}), "tiny")
    'The 2 notebooks before this appendix took 15 min from the first start to the last finish; their wall times add up to 25 min (the runner executes chapters side by side).'
    """
    rows = timings[(timings["profile"] == profile) & (timings["notebook"] != own_name)]
    if rows.empty:
        return "No notebook timings recorded yet for this profile."
    finished = pd.to_datetime(rows["finished_utc"])
    started = finished - pd.to_timedelta(rows["wall_seconds"], unit="s")
    elapsed = (finished.max() - started.min()).total_seconds()
    return (f"The {len(rows)} notebooks before this appendix took {elapsed / 60:.0f} min from the first start to "
            f"the last finish; their wall times add up to {rows['wall_seconds'].sum() / 60:.0f} min (the runner "
            "executes chapters side by side).")


def rerun_table(notebooks: list[str], timings: pd.DataFrame, profile: str) -> pd.DataFrame:
    """One row per notebook: the commands that reproduce it with the parameters it last ran with."""
    recorded = {row.notebook: json.loads(row.parameters) for row in timings.itertuples()}
    rows = []
    for name in notebooks:
        parameters = recorded.get(name, {})
        commands = rerun_commands(name, parameters.get("profile", profile), parameters)
        rows.append({"notebook": name, **commands})
    return pd.DataFrame(rows, columns=["notebook", "book runner", "papermill"])


def gpu_benchmarks(folder: str | Path = BENCHMARK_RESULTS) -> tuple[dict[str, pd.DataFrame], list[Path], str]:
    """Tables of the GPU benchmarks' results (``<folder>/bench_gpu_*.json``; dry runs skipped), their
    plots, and one sentence for the finding box: what was measured where and when, or that no GPU was
    available.

    >>> gpu_benchmarks("no-such-folder")[2].startswith("No GPU was available in this build")
    True
    """
    tables, images, measured = {}, [], []
    for name, parts in GPU_BENCHMARKS.items():
        path = Path(folder) / f"{name}.json"
        payload = json.loads(path.read_text()) if path.is_file() else None
        if payload is None or payload.get("dry_run", True):
            continue
        stamp = {"device": payload["device"], "date_utc": payload["date_utc"], "torch": payload["versions"]["torch"]}
        tables[name] = pd.DataFrame([{**row, **stamp} for part in parts for row in payload[part]])
        images += [path.with_suffix(".png")] if path.with_suffix(".png").is_file() else []
        measured.append(f"{name} on {payload['device']} ({payload['date_utc'][:10]})")
    if not tables:
        return tables, images, NO_GPU
    lora = tables.get("bench_gpu_unet", pd.DataFrame(columns=["name", "mfu"]))
    mfu = lora.loc[lora["name"] == "lora r16", "mfu"].dropna()
    utilisation = f" A rank-16 LoRA step reached {100 * mfu.iloc[0]:.0f}% of the card's peak (target 40%)." if len(mfu) else ""
    return tables, images, f"GPU benchmarks measured: {'; '.join(measured)}; random weights.{utilisation}"


@dataclass(kw_only=True)
class AppendixResult(ChapterResult):
    """The appendix's tables. Facts: ``base_model``, ``n_runs`` (finished runs of the profile),
    ``n_unfinished``, ``n_used`` (named by an executed chapter), ``n_version_mismatches``,
    ``n_gpu_benchmarks`` and the finding box's ``found_runs``, ``found_versions``, ``found_time``,
    ``found_elapsed``, ``found_peer``, ``found_gpu``."""

    runs: pd.DataFrame          # runs_used_table without the machine-specific run_dir column
    versions: pd.DataFrame
    hardware: pd.DataFrame
    timings: pd.DataFrame
    reruns: pd.DataFrame
    phases: pd.DataFrame = field(default_factory=pd.DataFrame)     # phase_profile: seconds per phase per notebook
    benchmarks: dict = field(default_factory=dict)                 # benchmark name -> its results JSON
    gpu_tables: dict[str, pd.DataFrame] = field(default_factory=dict)   # benchmark name -> its rows
    gpu_plots: list[Path] = field(default_factory=list)


def run_appendix(profile: Profile | str = "tiny", *, runs_root: str | Path = "runs",
                 executed_dir: str | Path = "book/notebooks",
                 benchmarks_dir: str | Path = "benchmarks/results") -> AppendixResult:
    """The appendix from the records under ``runs_root``, the executed chapters, runner timings
    and phase profile in ``executed_dir`` and the benchmarks' results in ``benchmarks_dir``
    (relative to the project root); nothing is trained, so it works whatever ran before."""
    from lora_core.paths import resolve
    from lora_core.book import toc_notebooks

    settings = resolve_profile(profile)
    run_table = runs_used_table(settings, runs_root, executed_dir)
    timings = notebook_timings(Path(executed_dir) / "_timings.json")
    result = AppendixResult(settings, runs=run_table.drop(columns=["run_dir"]), versions=version_table(run_table),
                            hardware=hardware_table(settings.device), timings=timings,
                            reruns=rerun_table(toc_notebooks(), timings, settings.name))
    result.add_facts(base_model=settings.base_model, **run_counts(run_table),
                     n_version_mismatches=int((~result.versions["agrees"]).sum()))
    result.gpu_tables, result.gpu_plots, found_gpu = gpu_benchmarks(resolve(benchmarks_dir))
    result.add_facts(found_gpu=found_gpu, n_gpu_benchmarks=len(result.gpu_tables))
    result.add_facts(found_runs=(f"Finished runs of this profile in the run folder: {result.facts['n_runs']} "
                                 f"({result.facts['n_used']} named by an executed chapter)."),
                     found_versions=versions_sentence(result.versions))
    result.phases = phase_profile(Path(executed_dir) / PROFILE_FILE_NAME)
    result.benchmarks = benchmark_results(resolve(benchmarks_dir))
    result.add_facts(found_time=time_sentence(result.phases), found_peer=peer_sentence(result.benchmarks.get("peer")),
                     found_elapsed=elapsed_sentence(timings, settings.name))
    return result


def run_counts(run_table: pd.DataFrame) -> dict[str, int]:
    """Finished and unfinished runs, and runs an executed chapter names, of :func:`runs_used_table`.

    >>> run_counts(pd.DataFrame({"finished": [True, True, False], "chapters": ["01", "", ""]}))
    {'n_runs': 2, 'n_unfinished': 1, 'n_used': 1}
    """
    finished = run_table["finished"].astype(bool)
    return {"n_runs": int(finished.sum()), "n_unfinished": int((~finished).sum()),
            "n_used": int((run_table["chapters"] != "").sum())}


def versions_sentence(versions: pd.DataFrame) -> str:
    """Whether every run was made with this build's library versions.

    >>> versions_sentence(pd.DataFrame({"library": ["torch", "peft"], "agrees": [True, False]}))
    'Some runs were trained with other versions of peft than this build: see the library table.'
    """
    differ = versions.loc[~versions["agrees"].astype(bool), "library"].tolist()
    if not differ:
        return "Every run used was trained with this build's library versions."
    return f"Some runs were trained with other versions of {', '.join(differ)} than this build: see the library table."


# ---- where the time goes: the runner's phase profile and the benchmarks ---------------------------

PROFILE_COLUMNS = ("notebook", "phase", "seconds", "share", "wall_seconds", "load_before", "load_after",
                   "torch_threads", "profile")


def phase_profile(profile_file: str | Path) -> pd.DataFrame:
    """One row per (notebook, phase) of the runner's ``_profile.json``: seconds, share of the
    notebook's wall time, the load before and after it and its torch threads; empty when absent."""
    path = Path(profile_file)
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    rows = [{"notebook": notebook, "phase": phase, "seconds": seconds, "share": entry["share"][phase],
             **{key: entry.get(key) for key in PROFILE_COLUMNS[4:]}}
            for notebook, entry in recorded.items() for phase, seconds in entry["seconds"].items()]
    return pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))


def phase_order(phases) -> list[str]:
    """Training, generation, each network's features, the bootstrap, the rest of the metrics, other.

    >>> phase_order(["other", "bootstrap", "features: inception", "generation", "training: set-up", "training"])
    ['training', 'training: set-up', 'generation', 'features: inception', 'bootstrap', 'other']
    """
    rank = {"training": 0, "training: set-up": 1, "generation": 2, "bootstrap": 4, "metrics: other": 5, OTHER: 6}
    return sorted(set(phases), key=lambda phase: (rank.get(phase, 3), phase))


def profile_table(phases: pd.DataFrame) -> pd.DataFrame:
    """A row per notebook and a total row, a column per phase: ``"seconds s (share)"``, then the
    wall time and the load around the notebook.

    >>> rows = pd.DataFrame({"notebook": ["a", "a"], "phase": ["training", "other"], "seconds": [30.0, 10.0],
    ...                      "share": [0.75, 0.25], "wall_seconds": [40.0, 40.0], "load_before": [1.0, 1.0],
    ...                      "load_after": [2.0, 2.0]})
    >>> profile_table(rows).loc["all notebooks"].tolist()
    ['30 s (75%)', '10 s (25%)', '40 s', '']
    """
    if phases.empty:
        return pd.DataFrame()
    seconds = phases.pivot_table(index="notebook", columns="phase", values="seconds", aggfunc="sum", sort=False,
                                 fill_value=0.0)[phase_order(phases["phase"])]
    seconds.loc["all notebooks"] = seconds.sum()
    walls = phases.groupby("notebook", sort=False)["wall_seconds"].first()
    walls["all notebooks"] = walls.sum()
    table = pd.DataFrame({phase: [f"{s:.0f} s ({s / walls[notebook]:.0%})" for notebook, s in column.items()]
                          for phase, column in seconds.items()}, index=seconds.index)
    loads = phases.groupby("notebook", sort=False)[["load_before", "load_after"]].first()
    table["wall"] = [f"{walls[notebook]:.0f} s" for notebook in table.index]
    table["load (before -> after)"] = [f"{loads.loc[n, 'load_before']} -> {loads.loc[n, 'load_after']}"
                                       if n in loads.index else "" for n in table.index]
    return table.rename_axis(columns=None)


def time_sentence(phases: pd.DataFrame) -> str:
    """Where most of the profiled time went, for the finding box.

    >>> time_sentence(pd.DataFrame({"notebook": ["a", "a"], "phase": ["training", "other"], "seconds": [30.0, 10.0]}))
    'Of 40 s profiled in 1 notebook, 75% went to training, 25% to other.'
    """
    if phases.empty:
        return "No phase profile recorded yet (the book runner writes one per notebook)."
    totals = phases.groupby("phase")["seconds"].sum().sort_values(ascending=False)
    shares = [f"{share:.0%} to {phase}" for phase, share in (totals / totals.sum()).head(3).items()]
    notebooks = phases["notebook"].nunique()
    return (f"Of {totals.sum():.0f} s profiled in {notebooks} notebook{'s' if notebooks > 1 else ''}, "
            f"{shares[0].replace(' to ', ' went to ', 1)}{''.join(', ' + share for share in shares[1:])}.")


def benchmark_results(results_dir: str | Path) -> dict[str, dict]:
    """Each ``<name>.json`` in ``results_dir`` (written by ``benchmarks/bench_*.py``) by name, with
    the path of its figure ``<name>.png`` under ``"figure"`` where there is one; the GPU benchmarks'
    files are :func:`gpu_benchmarks`' to read."""
    folder, results = Path(results_dir), {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.stem in GPU_BENCHMARKS:
            continue
        figure = path.with_suffix(".png")
        results[path.stem] = {**json.loads(path.read_text()), **({"figure": str(figure)} if figure.is_file() else {})}
    return results


def peer_comparisons(peer: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Label -> ``{"pairs", "summary"}`` of each comparison ``bench_peer.py`` made (the same
    precision both sides, and ours in bf16 against the example's default fp32); a result written
    before precisions were compared is one comparison, ``"fp32"``."""
    comparisons = peer.get("comparisons") or [{"label": "fp32", "pairs": peer["pairs"], "summary": peer["summary"]}]
    return {comparison["label"]: comparison for comparison in comparisons}


def peer_sentence(peer: Mapping[str, Any] | None) -> str:
    """The training speed against the peer in each comparison, with its spread, the peak memory
    and the load it was measured at."""
    if not peer:
        return "The comparison with the peer has not been run here (benchmarks/bench_peer.py)."
    parts = []
    for label, comparison in peer_comparisons(peer).items():
        summary = comparison["summary"]
        speed = summary.get("image_speed_ratio", summary["speed_ratio"])
        parts.append(f"{speed['median']:.2f}x ({label}; {speed['min']:.2f}-{speed['max']:.2f} over "
                     f"{len(comparison['pairs'])} interleaved pairs, {1 / summary['memory_ratio']['median']:.2f}x "
                     f"its peak memory)")
    return (f"Training speed (images per second) against a {peer['peer']}: {'; '.join(parts)}; measured "
            f"{peer['machine']['date_utc'][:10]} on {peer['machine']['cpu_count']} cores at load "
            f"{peer['load_before']}-{peer['load_after']}.")


def peer_table(peer: Mapping[str, Any]) -> pd.DataFrame:
    """One row per run pair of each comparison: speeds, their ratios, CPU seconds per image, peak
    memory and the load."""
    return pd.DataFrame([
        {"comparison": label, "pair": i + 1, "ours steps/s": p["ours"]["steps_per_s"],
         "peer steps/s": p["peer"]["steps_per_s"], "steps/s ours/peer": p["speed_ratio"],
         "images/s ours/peer": p.get("image_speed_ratio"), "CPU s/image ours": p["ours"].get("cpu_s_per_image"),
         "CPU s/image peer": p["peer"].get("cpu_s_per_image"), "peak MiB ours": p["ours"]["peak_rss_bytes"] / 2**20,
         "peak MiB peer": p["peer"]["peak_rss_bytes"] / 2**20, "load": p["ours"]["load"]}
        for label, comparison in peer_comparisons(peer).items() for i, p in enumerate(comparison["pairs"])])


def benchmark_tables(name: str, result: Mapping[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """(caption, table) pairs of one benchmark's results: the peer's pairs, the samplers' speed and
    agreement, the metric networks' throughput, each chapter's time alone."""
    if name == "peer":
        return [(f"ours against a {result['peer']}, {result['settings']}", peer_table(result))]
    if name == "generate":
        tables = [("generation cost per sampler setting (one thread, 16 images, CFG)",
                   pd.DataFrame(result["speed"])[["setting", "cpu_s_per_image", "wall_images_per_s"]])]
        if "agreement" in result:
            agreement = result["agreement"]
            rows = pd.DataFrame(agreement["paired"] + agreement["distributions"])
            verdicts = pd.DataFrame([{"setting": k, **v} for k, v in agreement["verdicts"].items()])
            tables += [(f"each setting against {agreement['current']} on {agreement['n_images']} held-out images "
                        f"(reference: {agreement['reference']})", rows.drop(columns=["floor"], errors="ignore")),
                       (f"may it replace {agreement['current']}?", verdicts)]
        return tables
    if name == "metrics":
        return [(f"metric networks on {result['n']} images of {result['size']} px, one thread",
                 pd.DataFrame(result["rows"])),
                ("the FID network on two cores", pd.DataFrame([result["fid_two_cores"]]))]
    if name == "chapters":
        return [("each chapter executed alone on its own fresh clone, one after another; a row naming several "
                 "(part I) executed them together, side by side, its phases summed over their kernels (tiny; seconds)",
                 pd.DataFrame(result["rows"])[["chapter", "commit", "elapsed_s", "training_s", "generation_s",
                                               "features_s", "other_s", "load_before", "load_after"]])]
    return [(name, pd.DataFrame(result.get("rows", [])))]


def show_benchmark(benchmarks: Mapping[str, Any], name: str) -> None:
    """Display one benchmark in a notebook: when and where it ran, its tables and its figure."""
    from IPython.display import Image, Markdown, display

    from lora_core.experiments.chapter import show_table

    result = benchmarks.get(name)
    if result is None:
        display(Markdown(f"*`benchmarks/bench_{name}.py` has not been run here.*"))
        return
    machine = result["machine"]
    display(Markdown(f"**{name}**: {machine['date_utc']}, {machine['cpu']}, {machine['cpu_count']} cores, "
                     f"torch {machine['torch']}, {machine['torch_threads']} thread(s), load "
                     f"{result['load_before']} before, {result['load_after']} after."))
    for caption, table in benchmark_tables(name, result):
        display(show_table(table, caption=caption))
    if "figure" in result:
        display(Image(filename=result["figure"]))
