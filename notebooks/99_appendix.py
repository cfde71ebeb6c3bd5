# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Reproducibility appendix
#
# **Question.** Which runs, library versions and machine produced this book, and how is each
# chapter re-run? Everything on this page is read from records that the other chapters left
# behind: the run folders under `runs/` (each named by its method and the hash of its full
# training config), the runner's per-notebook wall times, and the executed chapters. Nothing is
# trained here, so the page is correct whether or not the other chapters ran; it lists what exists.
#
# ```{admonition} What this build found
# :class: tip
#
# This book was executed with the **{glue:text}`profile_name`** profile (base model
# {glue:text}`base_model`). {glue:text}`profile_note`
#
# * {glue:text}`found_runs`
# * {glue:text}`found_versions`
# * {glue:text}`found_elapsed`
# * {glue:text}`found_time`
# * {glue:text}`found_peer`
# * {glue:text}`found_gpu`
# ```

# %% tags=["parameters", "hide-input"]
profile = "tiny"  # smoke, tiny or sd15
runs_root = "runs"  # folder of the run directories (<method>-<config hash>)
executed_dir = "book/notebooks"  # executed chapters and the runner's _timings.json
benchmarks_dir = "benchmarks/results"  # the benchmarks' JSON and figures (relative to the project root)

# %% tags=["hide-input"]
from IPython.display import Image

from lora_core import plots
from lora_core.experiments.appendix import phase_order, profile_table, run_appendix, show_benchmark
from lora_core.experiments.chapter import glue_facts, show_table

result = run_appendix(profile, runs_root=runs_root, executed_dir=executed_dir, benchmarks_dir=benchmarks_dir)
glue_facts(result.facts)

# %% [markdown]
# ## Hardware
#
# The machine that built this page. Runs reused from the cache may have been trained elsewhere:
# each run's own device is in the runs table below.

# %% tags=["hide-input"]
show_table(result.hardware, first=["item"])

# %% [markdown]
# ## GPU benchmarks
#
# {glue:text}`found_gpu` The benchmarks time training steps of SD v1.5's published architecture
# with random weights (valid for speed and memory, not for quality) and record the date, GPU and
# library versions beside every number: `benchmarks/bench_gpu_unet.py` (LoRA and full fine-tune
# steps at 512 px in bf16 with SDPA: seconds per step, peak memory, model-FLOPs utilisation against
# the card's peak, beside published speeds), `bench_gpu_peer.py` (our trainer beside the diffusers
# LoRA example's step) and `bench_gpu_scaling.py` (cost against rank, batch and resolution). Their
# results, when a GPU session wrote them to `benchmarks/results/`, follow.

# %% tags=["hide-input"]
for name, table in result.gpu_tables.items():
    display(show_table(table, first=["name"], caption=name))
for path in result.gpu_plots:
    display(Image(filename=str(path)))

# %% [markdown]
# ## Library versions
#
# Versions of this build beside the versions recorded in the summaries of the runs it used. A
# `False` under *agrees* means some cached run was trained with another version; re-train it with
# `--force` (or delete its folder) if its numbers must come from this environment.

# %% tags=["hide-input"]
show_table(result.versions, first=["library", "agrees"])

# %% [markdown]
# ## Notebook wall times
#
# Measured by the book runner (`python -m lora_core.book`): each notebook's last execution
# (`wall_seconds`) and the longest recorded with the same profile and parameters
# (`longest_wall_seconds`). A chapter that reused all its runs from the cache takes seconds; the
# execution that trained them is the longest. This appendix's own time is recorded after it
# finishes, so it shows the previous one. The runner executes chapters side by side (one torch
# thread each, as many as there are cores), the longest first after the chapters that work in
# one process (`lora_core.book.ONE_PROCESS_CHAPTERS`); once no chapter is left to start,
# a chapter still executing takes the idle core at once, even in the middle of a job, for the rest
# of its runs and jobs (`lora_core.core_slots`). So the book takes less than the sum of these
# times; its elapsed time is at the top of this page.

# %% tags=["hide-input"]
show_table(result.timings, first=["notebook", "wall_seconds"])

# %% tags=["hide-input"]
plots.timings_figure(result.timings, result.profile.name);

# %% [markdown]
# ## Where the time goes
#
# Inside each notebook's kernel, `lora_core.profiling` charges every second to the innermost
# named phase: `training` (with its `training: set-up`: copying the base, encoding the images
# with the VAE and the captions once), `generation`, each network's feature extraction
# (`features: <network>`), the `bootstrap` behind the intervals, the rest of the metrics
# (`metrics: other`: heads, resizing, kernels of KID), and `other` (the kernel's start and
# imports, model loading, tables and figures). A cell shows seconds and the share of that
# notebook's wall time; the load average (runnable processes; 2 means two busy cores) before and
# after says how much other work shared the machine. Every kernel computes with one torch thread
# (`lora_core.threads` says why).

# %% tags=["hide-input"]
show_table(result.phases.pipe(profile_table))

# %% tags=["hide-input"]
plots.profile_figure(result.phases, phase_order(result.phases["phase"]));

# %% [markdown]
# ## Benchmarks
#
# Written by `benchmarks/bench_*.py` (run by hand, not by the book) with their date, machine and
# load; on a shared machine they report ratios measured side by side and CPU seconds per unit of
# work. `bench_peer.py` trains against a **reproduction of diffusers' example step**
# (`train_text_to_image_lora.py` imports torchvision, which cannot be installed beside the CPU
# torch here): the same LoRA, model, images, batch and learning rate, each side in its own
# process, in alternating order; most of both sides' time is the same UNet forward and backward
# (`benchmarks/README.md`: where it goes, and what was tried on it). `bench_generate.py` times the
# samplers and checks a cheaper one against the images of the current one; `bench_metrics.py`
# times the metric networks.
# `bench_chapters.py` executes chapters one at a time, each alone on its own fresh clone: what
# re-executing one chapter costs. Alone, a chapter's kernel trains two runs at a time on two cores;
# chapters 1-3, 5 and 8 run one job per run (train it, then generate and score with it; chapter 2
# trains all its runs first, so its last jobs are short) two at a time, with their real images'
# features as one more job (`lora_core.train_pool`). Inside the book two chapters share the cores
# and each does all of this one at a time until a core falls idle, so the wall times above are
# longer than these. Each row names the commit it was measured at.

# %% tags=["hide-input"]
for name in ("peer", "generate", "metrics", "train", "chapters"):
    show_benchmark(result.benchmarks, name)

# %% [markdown]
# ## Runs
#
# {glue:text}`n_runs` finished runs of this profile are in `runs/` ({glue:text}`n_unfinished`
# unfinished), {glue:text}`n_used` of them named by an executed chapter (column *chapters*). A
# finished run is reused by every chapter whose config hashes the same; an unfinished one resumes
# exactly from its last saved state. `alpha` empty means alpha is tied to the rank.

# %% tags=["hide-input"]
show_table(result.runs, first=["method", "config_hash", "finished", "chapters"])

# %% [markdown]
# ## Re-running a chapter
#
# Each chapter re-runs alone, with the parameters it last ran with, through the book runner
# (which refuses a misspelled parameter) or with plain papermill (which only warns about one).
# Finished runs are reused, so a re-run for a new plot costs seconds; delete a run folder, or call
# `lora_core.train.train(config, force=True)`, to re-train it. The whole book: `make book` (tiny profile) or
# `python -m lora_core.book --profile sd15` on a GPU.

# %% tags=["hide-input"]
show_table(result.reruns, first=["notebook"])
