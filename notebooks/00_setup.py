# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Setup: environment, profile, data and base model
#
# **Question.** What was this book built with, and what does the base model draw before any
# fine-tuning? This chapter records library versions and device, the profile's settings, the
# style sets, and the base model's own generations beside the real images of their subjects.
#
# ```{admonition} What this build found
# :class: tip
#
# This build used the **{glue:text}`profile_name`** profile: {glue:text}`profile_description`.
#
# * {glue:text}`found_check2`
# * {glue:text}`found_data`
# ```

# %% tags=["parameters", "hide-input"]
profile = "tiny"  # smoke, tiny or sd15
n_samples = 8  # held-out subjects shown in the sample grids
seed = 0  # seed of the first sample

# %% tags=["hide-input"]
from lora_core import plots
from lora_core.experiments.chapter import glue_facts, show_table
from lora_core.experiments.setup import run_setup

result = run_setup(profile, n_samples=n_samples, seed=seed)
glue_facts(result.facts)

# %% [markdown]
# {glue:text}`profile_note`
#
# ## Environment

# %% tags=["hide-input"]
show_table(result.environment, first=["component"])

# %% [markdown]
# ## Profile settings

# %% tags=["hide-input"]
show_table(result.settings, first=["setting"])

# %% [markdown]
# ## The base model

# %% tags=["hide-input"]
show_table(result.model_size, first=["part"])

# %% [markdown]
# ### Quality checks of the shipped tiny base
#
# Checks 1 and 2 are measured on the exported `models/tiny-sd` folder by
# `python -m lora_core.toy check` (its model card on the [data page](../data.md) explains them):
# (1) VAE reconstruction of Noto emoji held out of VAE training, (2) whether the base draws its
# subjects. Check 3, whether a style LoRA moves generations for held-out subjects toward its
# style, needs trained LoRAs: chapter 1 runs it, and its results are pasted below.

# %% tags=["hide-input"]
show_table(result.checks, first=["check"])

# %% [markdown]
# The base's generations sit at {glue:text}`check2_ratio` the VAE's own round-trip error from
# the real images of their captions ({glue:text}`check2_target`), and the subject classifier
# recognises the emoji category of {glue:text}`check2_subjects` of them.
#
# **Check 3**, from [chapter 1](01_style_benchmark.ipynb) of this build: one LoRA per style set,
# trained with this profile's settings and {glue:text}`01_style_benchmark.ipynb::n_seeds:s` seeds,
# generates images for subjects it never saw. The verdict per style counts the directional checks
# (paired distance to the target style's true image falls, P(target style) rises, each by more
# than the seed-to-seed range and beyond the base's interval):
#
# ```{glue} check3_verdicts
# :doc: 01_style_benchmark.ipynb
# ```
#
# In all, {glue:text}`01_style_benchmark.ipynb::check3_pass:s` directional checks pass. Subjects
# stay recognisable (the subject classifier's accuracy on adapted generations is within or above
# the base's interval) for {glue:text}`01_style_benchmark.ipynb::n_recognisable:s` styles, and in
# the cross-style control each LoRA's own style wins in
# {glue:text}`01_style_benchmark.ipynb::cross_style_pass:s` (adapter, measure) pairs. Chapter 1's
# section "Check 3" has every measure with its seed range, and the distances to the base style.
#
# ## The style sets
#
# Each style set has training subjects and disjoint held-out subjects (see the
# [data page](../data.md)). The report counts images and caption lengths in the base model's
# tokens; nothing may be skipped. Files with problems across all sets:
# {glue:text}`n_problem_files`.

# %% tags=["hide-input"]
show_table(result.style_sets, first=["style", "split", "images", "problems"])

# %% [markdown]
# ## What the base model draws
#
# For held-out subjects, the real image in every vendor's style (the base model was trained on
# Noto) beside the base model's own generation from the subject's caption, without any
# trigger word. With the `smoke` profile the model is random and its images are noise.

# %% tags=["hide-input"]
plots.sheet_figure(result.samples);
