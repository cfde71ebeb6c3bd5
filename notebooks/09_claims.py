# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The five studies, claim by claim
#
# **Question.** Of what studies S1-S5 claimed, what does this book confirm, what does it not,
# and what can it not test at this scale? Every row below is read from the executed chapters of
# this build (the facts each chapter glued into its page), and its verdict comes from a stated
# rule, so the table changes when a chapter's numbers change and cannot drift from them.
#
# ```{admonition} What this build found
# :class: tip
#
# {glue:text}`profile_note`
#
# * {glue:text}`found_claims`
# ```

# %% tags=["parameters", "hide-input"]
profile = "tiny"  # smoke, tiny or sd15
executed_dir = "book/notebooks"  # the executed chapters this page reads

# %% tags=["hide-input"]
from lora_core import plots
from lora_core.experiments.chapter import glue_facts, show_table
from lora_core.experiments.claims import VERDICT_COLOURS, run_claims

result = run_claims(profile, executed_dir=executed_dir)
glue_facts(result.facts)

# %% [markdown]
# ## How a claim is judged
#
# * **confirmed**: the chapter's measurement says so beyond its uncertainty: a 95% interval on
#   the claimed side (of 0, or of the value the claim names), every seed or case agreeing, or the
#   chapter's own tested decision word;
# * **not confirmed**: the opposite was measured, or the difference lies within the noise (the
#   "why" column says which);
# * **not testable at this scale**: no measurement here can speak to it: it needs people, names
#   no criterion, or concerns prompts that the alignment stand-in cannot read on real images;
# * **not measured in this build**: the chapter was not executed with this profile, or its
#   measure was missing (a smoke build has no alignment model, for instance).
#
# Chapters read in this build ({glue:text}`profile_name` profile): {glue:text}`chapters_read`;
# not read: {glue:text}`chapters_unread`. The "reported by the study" column holds the studies'
# own numbers (their data, their hardware, mostly one seed); "measured here" holds the fact the
# chapter glued, in its own words and units.
#
# ## The claims

# %% tags=["hide-input"]
show_table(result.table, first=["study", "claim", "verdict"],
           caption=f"every main claim of S1-S5 against this build ({result.profile.name} profile)")

# %% [markdown]
# ## Per study
#
# Of {glue:text}`n_claims` claims: {glue:text}`n_confirmed` confirmed, {glue:text}`n_not_confirmed`
# not confirmed, {glue:text}`n_not_testable` not testable at this scale and
# {glue:text}`n_not_measured` not measured in this build.

# %% tags=["hide-input"]
plots.stacked_bars(result.by_study(), "study", title=f"verdicts per study ({result.profile.name} profile)",
                   xlabel="claims", colours=VERDICT_COLOURS);

# %% tags=["hide-input"]
show_table(result.by_study(), first=["study"])

# %% [markdown]
# A verdict here is about the claim at this book's scale, on the tiny model and the emoji world
# (or on Stable Diffusion with the `sd15` profile), not about the studies' own runs: a claim that
# is not confirmed may hold for SD v1.5 at 512 px, and the chapters say what differs. What the
# table does show is which claims the studies' own evidence (one seed, small samples, CLIP or FID
# without intervals) could not carry, and which of them survive a repetition with intervals.
