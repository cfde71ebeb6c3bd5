# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Rank and learning rate
#
# **Question.** How do the LoRA rank and the learning rate change a style LoRA? Study S1 (Exp. II)
# trained ranks {8, 16, 32} x learning rates {1e-4, 5e-4} on its Ghibli set and read its table as
# "rank 16 balances; a higher learning rate lowers FID but also CLIP", with alpha held at 16 for
# every rank. We run its grid twice, alpha fixed and alpha tied to the rank.
#
# ```{admonition} What this build found
# :class: tip
#
# {glue:text}`profile_note`
#
# * {glue:text}`found_scale`
# * {glue:text}`found_lr`
# * {glue:text}`found_fid`
# * {glue:text}`found_tradeoff`
# ```
#
# Why twice: a LoRA's update is scaled by $s = \alpha / r$, so with alpha held at 16 S1's rank 8
# trained at scale 2 and rank 32 at scale 0.5. With Adam, whose steps are about the learning rate
# in size whatever the gradient's scale, the change of $sBA$ per step grows with $s$, so the
# rank-32 LoRA also learned four times more slowly than the rank-8 one: rank and effective step
# size were confounded. **Alpha fixed** at S1's value (scale falls with rank, as in S1) repeats
# S1; **alpha tied to the rank** (alpha = r, scale 1 everywhere, as in the diffusers examples)
# separates the two. Where the arms meet (rank = alpha) the configs are identical and the run is
# shared.

# %% tags=["parameters", "hide-input"]
profile = "tiny"  # smoke, tiny or sd15
n_seeds = 0  # training seeds per cell; 0 means the profile default
n_prompts = 0  # training captions regenerated per run; 0 means the profile default
fid = True  # also FID (Inception 2015, ~0.26 s per image on 2 CPU threads) beside FD-EffNet

# %% tags=["hide-input"]
from lora_core import plots
from lora_core.experiments.ablation import run_ablation
from lora_core.experiments.chapter import backbone_note, glue_facts, show_table

result = run_ablation(profile, n_seeds=n_seeds, n_prompts=n_prompts, fid=fid)
glue_facts(result.facts)
name, grid = result.profile.name, result.settings

# %% [markdown]
# ## Setup
#
# Profile **{glue:text}`profile_name`**, style set **{glue:text}`style`**. Learning rates are
# S1's times {glue:text}`lr_scale`, the ratio of the profile's LoRA learning rate to S1's 1e-4
# (the tiny profile trains a model pretrained here at 32 px for a few hundred steps and uses a
# ten times larger step so that its LoRAs move visibly in that time); the grid keeps S1's factor
# of 5 between its two rates. {glue:text}`steps` steps per run (S1: {glue:text}`s1_steps`; the
# tiny profile keeps its standard steps so that the cell at its own rank, alpha and learning rate
# is chapter 1's run), {glue:text}`n_seeds` training seed(s), alpha {glue:text}`fixed_alpha` in
# the fixed arm. {glue:text}`n_cells` cells, {glue:text}`n_runs` distinct runs. Each run
# regenerates {glue:text}`n_prompts` training captions (S1's protocol) with the
# caption's own seed, the same for every run.

# %% tags=["hide-input"]
show_table(result.grid_table(), first=["alpha mode", "rank", "S1 lr", "seed", "config_hash"])

# %% [markdown]
# ## Loss curves

# %% tags=["hide-input"]
plots.line_panels(result.loss_curves(), "step", "loss_smooth", panel="panel", line="line", sharey=True,
                  ylabel="training loss (rolling mean)", title=f"training loss, {grid.style}, {name} profile (first seed)");

# %% [markdown]
# ## Cost: parameters, file size, and the size of the update
#
# Trainable parameters and file size grow linearly with the rank and do not depend on alpha. The
# third panel is the mean size of what was learned, $\|sBA\|_F$ per layer: with alpha fixed the
# scale $16/r$ shrinks as the rank grows, with alpha tied it stays 1.

# %% tags=["hide-input"]
plots.line_panels(result.cost_panels(), "rank", "value", panel="panel", line="line", dashed="dashed", log2_x=True,
                  xlabel="rank r", ylabel="", title=f"cost vs rank, {name} profile");

# %% tags=["hide-input"]
show_table(result.size_table(), first=["rank"])

# %% tags=["hide-input"]
show_table(result.cost_table(), first=["rank", "alpha_mode"])

# %% [markdown]
# Going from rank {glue:text}`rank_low` to {glue:text}`rank_high` multiplies the trainable
# parameters by {glue:text}`params_ratio:.2f` (the rank ratio is {glue:text}`rank_ratio:.0f`).
# At S1's lower learning rate, the learned update of the rank-{glue:text}`rank_high` LoRA is
# {glue:text}`fixed_norm_ratio:.2f` times that of rank {glue:text}`rank_low` with alpha fixed and
# {glue:text}`tied_norm_ratio:.2f` times with alpha tied: the ratio between the two arms is the
# part of any "rank effect" in S1's table that came from the scale, not the rank.
#
# ## Metrics against rank
#
# FD-EffNet and KID-EffNet against the {glue:text}`n_prompts` originals (EfficientNet-Lite0
# features, not the Inception network of FID; far below the sample sizes these distances need,
# so compare them between cells, not with published FIDs), IS-EffNet, ST-LPIPS diversity between
# random pairs (S1's "LPIPS"), prompt alignment (AlignScore (stand-in), not CLIP), and, where the
# toy world's heads are available, the style classifier's P(target style) and the paired
# distances to each subject's true image. {glue:text}`seed_note` Measures left out in this
# build: {glue:text}`missing_measures`.

# %% tags=["hide-input"]
plots.interval_panels(result.rank_panels(), "rank", line="line", dashed="dashed", log2_x=True, xlabel="rank r",
                      title=f"{grid.style}, {name} profile, {backbone_note(result.profile)}");

# %% tags=["hide-input"]
show_table(result.results_table(), first=["measure", "alpha_mode", "study_lr"],
           caption=f"{grid.style}, {name} profile: value [95% interval] per rank (columns); "
                   f"{len(grid.training_seeds)} training seed(s), {grid.n_prompts} images per run")

# %% [markdown]
# ## The trade-off: style gained against subject lost
#
# Every run of the grid on the held-out subjects of chapter 1 (subjects no run trained on): the
# style gained, as the {glue:text}`tradeoff_measure` (chapter 1 defines it: the style judge's
# P(style) on the LoRA's images, the base's and the true images after the VAE), against the
# subject classifier's accuracy lost (the base's minus the LoRA's). Up and to the left is better.
# A run both arms share (rank = alpha) is one point. Dotted: issue #15's bounds, at most 10
# points of subject accuracy lost and, where the axis is the share of the way, the 0.75 a far
# style should reach (the grid's style may be a near one, held only to moving beyond the base's
# interval; chapter 1 reads its verdict). Intervals: a bootstrap over subjects within a seed, the
# same subjects in every term, and a t-interval over seeds.

# %% tags=["hide-input"]
if len(result.tradeoff):
    plots.tradeoff_figure(result.tradeoff, xlabel="subject accuracy lost (base - LoRA)",
                          ylabel=result.facts["tradeoff_measure"],
                          title=f"{grid.style}, held-out subjects, {name} profile", **result.tradeoff_guides())

# %% tags=["hide-input"]
show_table(result.gains_table(), first=["alpha_mode", "rank", "study_lr"])

# %% [markdown]
# {glue:text}`found_tradeoff`
#
# ## Do FID and FD-EffNet rank the runs alike?
#
# The other chapters measure distributions with FD-EffNet alone, because FID proper (Inception
# 2015 at 299 px) costs about ten times more per image on this CPU. This grid's distinct runs are
# the place to check that choice: every run scored by both, ranked by each (1 = closest to the
# training images).

# %% tags=["hide-input"]
if len(result.ranking):
    display(show_table(result.ranking, first=result.ranking_keys(),
                       caption=f"FID (Inception 2015, {result.profile.resolution}->299 px) and FD-EffNet, "
                               f"{grid.n_prompts} images per run; {name} profile"))

# %% [markdown]
# Result: {glue:text}`fid_agreement`. {glue:text}`fid_reading`. Both distances are computed on
# far fewer images than feature dimensions, so both are biased upward by a similar amount for
# every run: their values cannot be compared with published FIDs, only between runs.
#
# ## Beside S1
#
# S1's Exp. II numbers (reported by the study: their data, SD v1.5 at 512 px, Inception FID,
# CLIP ViT score, LPIPS) next to ours for the arm that matches their code (alpha fixed). Our
# columns are other networks on another model at another scale: compare directions, not values.

# %% tags=["hide-input"]
show_table(result.s1_table, first=["rank", "S1 lr"],
           caption=f"S1 Exp. II as reported by the study (SD v1.5, Inception FID, CLIP) beside ours "
                   f"({name} profile, alpha fixed, {result.profile.feature_backbone} features)")

# %% [markdown]
# S1 read its table as "a higher learning rate lowers FID but also CLIP". In our fixed-alpha arm,
# moving from S1's lower to its higher learning rate, FD-EffNet {glue:text}`fd_fixed`
# (tied arm: {glue:text}`fd_tied`), and prompt alignment {glue:text}`alignment_fixed`.
#
# S1's FIDs differ by at most about 10 between cells, with 100 images, one seed and no
# intervals; at that sample size a Fréchet distance's bias and sampling spread can be of that
# order, so their "rank 16 balances" cannot be told apart from noise. The fixed-alpha confound adds a
# second reason: their rank-8 cells trained at four times the effective step of their rank-32
# cells, so a difference between ranks may be a difference in how far training got. Why our
# numbers may differ from theirs beyond that: model scale (a tiny 32 px model vs SD v1.5 at
# 512 px), data (emoji vendor styles vs anime frames), steps ({glue:text}`steps` vs
# {glue:text}`s1_steps`), and metric networks (EfficientNet-Lite0 features and a stand-in
# alignment score vs Inception FID and CLIP).
