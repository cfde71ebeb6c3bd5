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
# Everything on this page is read from records that the other chapters left behind: the run
# folders under `runs/` (each named by its method and the hash of its full training config), the
# runner's per-notebook wall times, and the executed chapters. Nothing is trained here, so the
# page is correct whether or not the other chapters ran; it lists what exists.

# %% tags=["parameters"]
profile = "tiny"  # smoke, tiny or sd15
runs_root = "runs"  # folder of the run directories (<method>-<config hash>)
executed_dir = "book/notebooks"  # executed chapters and the runner's _timings.json

# %%
from pathlib import Path

import pandas as pd
from myst_nb import glue

from lora_core.book import toc_notebooks
from lora_core.experiments import appendix
from lora_core.profiles import get_profile

settings = get_profile(profile)
run_table = appendix.runs_used_table(settings, runs_root, executed_dir)
finished = run_table[run_table["finished"]]
glue("profile_name", settings.name, display=False)
glue("n_runs", len(finished), display=False)
glue("n_unfinished", int((~run_table["finished"]).sum()), display=False)
glue("n_used", int((run_table["chapters"] != "").sum()), display=False)
glue("base_model", settings.base_model, display=False)
glue("smoke_note", " With the smoke profile the model is random and every number in the book is noise."
     if settings.name == "smoke" else "", display=False)

# %% [markdown]
# This book was executed with the **{glue:text}`profile_name`** profile (base model
# {glue:text}`base_model`).{glue:text}`smoke_note`
#
# ## Hardware
#
# The machine that built this page. Runs reused from the cache may have been trained elsewhere:
# each run's own device is in the runs table below.

# %%
appendix.hardware_table(settings.device)

# %% [markdown]
# ## Library versions
#
# Versions of this build beside the versions recorded in the summaries of the runs it used. A
# `False` under *agrees* means some cached run was trained with another version; re-train it with
# `--force` (or delete its folder) if its numbers must come from this environment.

# %%
appendix.version_table(run_table)

# %% [markdown]
# ## Notebook wall times
#
# Measured by the book runner (`python -m lora_core.book`): each notebook's last execution
# (`wall_seconds`) and the longest recorded with the same profile and parameters
# (`longest_wall_seconds`). A chapter that reused all its runs from the cache takes seconds; the
# execution that trained them is the longest. This appendix's own time is recorded after it
# finishes, so it shows the previous one.

# %%
timings = appendix.notebook_timings(Path(executed_dir) / "_timings.json")
timings

# %%
appendix.timings_figure(timings, settings.name);

# %% [markdown]
# ## Runs
#
# {glue:text}`n_runs` finished runs of this profile are in `runs/` ({glue:text}`n_unfinished`
# unfinished), {glue:text}`n_used` of them named by an executed chapter (column *chapters*). A
# finished run is reused by every chapter whose config hashes the same; an unfinished one resumes
# exactly from its last saved state. `alpha` empty means alpha is tied to the rank.

# %%
run_table.drop(columns=["run_dir"])

# %% [markdown]
# ## Re-running a chapter
#
# Each chapter re-runs alone, with the parameters it last ran with, through the book runner
# (which refuses a misspelled parameter) or with plain papermill (which only warns about one).
# Finished runs are reused, so a re-run for a new plot costs seconds; delete a run folder, or call
# `lora_core.train.train(config, force=True)`, to re-train it. The whole book: `make book` (tiny profile) or
# `python -m lora_core.book --profile sd15` on a GPU.

# %%
with pd.option_context("display.max_colwidth", None):
    display(appendix.rerun_table(toc_notebooks(), timings, settings.name))
