# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Style mixing between two LoRAs
#
# **Question.** Given two style LoRAs, what happens between them? Study S1 (Exp. IV) mixed its
# Ghibli and Shinkai LoRAs with a weight $a$ from 1 to 0 and reported, by eye and by CLIP/LPIPS,
# *a gradual shift, with artefacts at mid-range a*. Two different operations go by "mixing", and
# we run both side by side.
#
# ```{admonition} What this build found
# :class: tip
#
# {glue:text}`profile_note`
#
# * {glue:text}`found_shift`
# * {glue:text}`found_gap`
# ```
#
# S1 wrote its mix as $\theta_{mix} = a\,\theta_{A} + (1-a)\,\theta_{B}$ for
# $a \in \{1, .75, .5, .25, 0\}$. The two operations:
#
# * **output-space blending**: both adapters active at once with weights $a$ and $1-a$
#   (diffusers' `set_adapters`, A1111's `<lora:A:a> <lora:B:1-a>`). Every layer's update is
#   $a\,s_A B_A A_A + (1-a)\,s_B B_B A_B$, exactly linear in $a$.
# * **weight-space interpolation** (S1's formula applied to the LoRA factors):
#   $B_{mix} = aB_A + (1-a)B_B$ and $A_{mix} = aA_A + (1-a)A_B$. Their product has cross terms, so
#   it differs from the blend by $-a(1-a)\,s\,(B_A - B_B)(A_A - A_B)$ in every layer — largest at
#   $a = 0.5$, zero at the ends.
#
# Both mixes are written as ordinary LoRA files (the blend as one LoRA of rank $r_A + r_B$ whose
# factors are the two LoRAs' stacked, which is exactly the blend) and generated like any other LoRA.

# %% tags=["parameters", "hide-input"]
profile = "tiny"  # smoke, tiny or sd15
style_a = "twemoji"  # style at a 1 (a LoRA of chapter 1)
style_b = "openmoji"  # style at a 0 (a LoRA of chapter 1)
weights = [1.0, 0.75, 0.5, 0.25, 0.0]  # mixing weights a of style A (S1 Exp. IV)
n_prompts = 0  # held-out subjects per (mode, a); 0 means the profile default
n_seeds = 0  # training seeds of the LoRA pairs; 0 means the profile default

# %% tags=["hide-input"]
from lora_core import plots
from lora_core.experiments.chapter import backbone_note, glue_facts, show_table
from lora_core.experiments.mixing import run_mixing

result = run_mixing(profile, style_a=style_a, style_b=style_b, weights=weights, n_prompts=n_prompts, n_seeds=n_seeds)
glue_facts(result.facts)
name = result.profile.name

# %% [markdown]
# ## Setup
#
# Profile **{glue:text}`profile_name`**. Style A is **{glue:text}`style_a`**, style B is
# **{glue:text}`style_b`**: chapter 1's LoRAs, built by the same config function, so their config
# hashes (below) are chapter 1's and the runs are shared: whichever of the two chapters executes
# first trains them, the other reuses them. Each mix is generated for
# {glue:text}`n_prompts` held-out subjects (never trained on by either LoRA) with their own seeds,
# the same seeds at every $a$, prompted with both trigger words as one does when stacking style
# LoRAs, e.g. "{glue:text}`example_prompt`". LoRA pairs from {glue:text}`n_seeds` training seed(s)
# (seed $s$ of A mixes with seed $s$ of B); with more than one, tables give the mean over seeds
# with a t-interval, otherwise a 95% bootstrap interval over images.

# %% tags=["hide-input"]
show_table(result.config_table(), first=["run", "config_hash"])

# %% tags=["hide-input"]
show_table(result.lora_table(), first=["LoRA", "run"])

# %% [markdown]
# ## Where the two mixes differ: per layer
#
# The gap between interpolation and blend is computed in closed form for every LoRA layer
# (first training seed): $\|\Delta_{interp} - \Delta_{blend}\|_F / \|\Delta_{blend}\|_F$. Lines are
# the mean over the layers of a block, bands their range.

# %% tags=["hide-input"]
plots.line_plot(result.gaps, x="a", y="relative_gap", hue="block", ylabel="||interp - blend|| / ||blend||",
                title=f"weight-space gap per layer ({name} profile)");

# %% tags=["hide-input"]
show_table(result.block_table(), first=["block"])

# %% [markdown]
# At $a$ = {glue:text}`middle_a` the interpolated update differs from the blend by a median
# {glue:text}`gap_median:.3f` of the blend's own size per layer (largest,
# {glue:text}`gap_max:.3f`, in {glue:text}`gap_max_block`). The gap is the product of how far
# the two LoRAs' factors lie apart (columns *down* and *up*: relative distance between the two
# LoRAs' $A$ and $B$ matrices). Both LoRAs were trained with the same seed, and peft draws the
# initial $A$ from that seed (with $B = 0$), so the two start from the *same* $A$: the median
# relative distance between their $A$ factors is {glue:text}`down_divergence:.3f`, between their
# $B$ factors {glue:text}`up_divergence:.3f`. The cross terms are therefore only as large as
# training moved the two $A$s apart; LoRAs trained from different seeds, or downloaded from
# different authors, have unrelated $A$s, and interpolating those mixes noise into every layer.
#
# ## Generations and measures

# %% tags=["hide-input"]
plots.sheet_figure(result.strip_sheet());

# %% [markdown]
# Each pair of rows is one held-out subject: output-space blend above, weight-space
# interpolation below; the outer columns are the two pure LoRAs and coincide for both modes.
#
# The measures, all against $a$ (95% intervals; {glue:text}`n_seeds` training seed(s)):
# P(style) and the share of images the style classifier assigns to each style, the EffNet
# feature distance to the true image of the same subject in each style (lower = closer), prompt
# alignment (AlignScore (stand-in), never CLIP), ST-LPIPS diversity between random pairs (what
# S1 called "LPIPS"), ST-LPIPS to the same prompt's image from each pure LoRA, and ST-LPIPS
# between the two mixes at the same $a$. Measures left out in this build: {glue:text}`missing_measures`.

# %% tags=["hide-input"]
plots.interval_panels(result.measure_panels(), "a", line="line", xlabel="a (weight of style A)",
                      title=f"style mixing, {name} profile, {backbone_note(result.profile)}");

# %% tags=["hide-input"]
show_table(result.results_table(), first=["measure", "target_style", "mode"],
           caption=f"{style_a} (a=1) to {style_b} (a=0), {name} profile: value [95% interval] per a (columns); "
                   f"{len(result.seeds)} training seed(s), {len(result.evalset)} held-out subjects")

# %% [markdown]
# ## Beside S1
#
# S1 reported no table for Exp. IV, only its reading: *a gradual shift, with artefacts at
# mid-range a*. In our build:
#
# * P({glue:text}`style_a`) under the output-space blend {glue:text}`shift_blend`; under
#   weight-space interpolation it {glue:text}`shift_interpolate`.
# * Prompt alignment at $a$ = {glue:text}`middle_a`, against the mean of the two ends,
#   {glue:text}`mid_alignment_blend` for the blend and {glue:text}`mid_alignment_interpolate` for
#   interpolation (S1's "artefacts at mid-range" would show as lower).
# * The two mixes' images at $a$ = {glue:text}`middle_a` differ by ST-LPIPS
#   {glue:text}`mode_gap_mid:.3f` (0 at the ends by construction).
#
# Why ours may differ from S1: their LoRAs were rank-16 attention LoRAs on SD v1.5 at 512 px
# trained 1000 steps on ~100 anime frames, ours are the profile's LoRAs on the tiny model at
# 32 px; they judged by eye and with CLIP, we use a learned style judge (a CNN on pixels), EffNet
# feature distances, ST-LPIPS and a stand-in alignment score; and S1 does not say whether their
# "interpolation" mixed LoRA factors (as here) or merged full weight deltas, which would be the
# blend.
