# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Multi-style benchmark: LoRA vs the base model
#
# **Question.** Does a style LoRA move a model's images toward the style it was trained on, on
# the training captions (what study S1 measured), on subjects it never saw, and on prompts
# unlike any training caption, while the subjects stay recognisable?
#
# ```{admonition} What this build found
# :class: tip
#
# {glue:text}`profile_note`
#
# * {glue:text}`found_verdicts`
# * {glue:text}`found_subjects`
# * {glue:text}`found_share`
# * {glue:text}`found_blind`
# ```
#
# **Setup.** One LoRA per style set, from near to far from the base model's own style (the
# base was pretrained on Noto emoji): Twemoji (flat), OpenMoji (thick outlines), Fluent 3D
# (soft 3D). Each is trained with the profile's settings and several seeds. Every prompt is
# generated twice with the same seed, once by the plain base and once with the LoRA, and
# compared with the true images of the same subject, which exist in every style in this toy
# world (so distances are *paired*, not only distributional).

# %% tags=["parameters", "hide-input"]
profile = "tiny"  # smoke, tiny or sd15
n_sheet_rows = 6  # subjects per sample sheet
fid = False  # also FID (Inception 2015) on the training captions: ~0.26 s per image on 2 CPU threads

# %% tags=["hide-input"]
from lora_core import plots
from lora_core.experiments.benchmark import run_benchmark
from lora_core.experiments.chapter import glue_facts, show_table
from lora_core.experiments.evaluate import reported_table, tables_by_eval_set, unavailable_table

result = run_benchmark(profile, n_sheet_rows=n_sheet_rows, fid=fid)
glue_facts(result.facts)

# %% [markdown]
# ## Runs
#
# {glue:text}`n_styles` styles x {glue:text}`n_seeds` training seeds, built by
# `lora_core.experiments.common.style_lora_config` (the same function chapters 2 and 4 use, so
# identical settings share a run folder). Each evaluation set has up to {glue:text}`n_eval`
# prompts. Compared with S1 (SD v1.5, 512 px, batch 1, 1000 steps, lr 1e-4, rank 16, alpha 16),
# the {glue:text}`profile_name` profile trains a {glue:text}`profile_training` (in tiny, a model
# 100x smaller tolerates and needs a larger step; chapter 2 sweeps it).

# %% tags=["hide-input"]
show_table(result.config_table(), first=["run", "config_hash"])

# %% tags=["hide-input"]
show_table(result.summaries(), first=["style", "seed", "config_hash"])

# %% [markdown]
# A run took {glue:text}`mean_wall_s` s on average ({glue:text}`mean_s_per_step` s per step on
# the machine that trained it; the appendix lists each run's device).

# %% tags=["hide-input"]
plots.line_panels(result.loss_curves(), "step", "smoothed loss", line="style", units="seed",
                  title=f"training loss (rolling mean of 20 steps), every seed; {result.profile.name} profile");

# %% [markdown]
# ## Samples: true | LoRA | base
#
# One row per subject: first the subject's true image in the base model's own style (Noto),
# then for each style its true image ("true openmoji"), right beside it the LoRA's image
# ("LoRA openmoji") and then the base model's image from the same prompt and seed ("base
# (openmoji prompt)": the prompt carries the style's trigger word, which the base never learned).
# First the training captions (S1's comparison), then held-out subjects, then unseen prompts (no
# true image exists for those).

# %% tags=["hide-input"]
plots.sheet_figure(result.sheets["train"]);

# %% tags=["hide-input"]
plots.sheet_figure(result.sheets["heldout"]);

# %% tags=["hide-input"]
plots.sheet_figure(result.sheets["unseen"]);

# %% [markdown]
# ## Results
#
# Every number is a mean with a 95% interval: over images for the base (one model), over
# training seeds (t-interval) for the LoRAs. Backbones are named: FD-EffNet and KID-EffNet use
# EfficientNet-Lite0 features (not Inception: this is not FID), ST-LPIPS is the shift-tolerant
# LPIPS, AlignScore is a stand-in trained here on MiniLM and EfficientNet features (not CLIP).
# FID proper (Inception 2015 at 299 px) costs about 0.26 s per image on two CPU threads, so it
# is computed only on request (`python -m lora_core.book --only 01_style_benchmark -p fid true`),
# on the training captions.

# %% tags=["hide-input"]
if result.unavailable:
    display(show_table(unavailable_table(result.unavailable)))
for table in tables_by_eval_set(result.aggregated, ["style", "adapter"], f"base vs LoRA ({result.profile.name} profile)"):
    display(table)

# %% [markdown]
# ## Check 3: on held-out subjects, does the LoRA move generations toward the target style?
#
# For each style, on subjects no run trained on: the paired distance to the same subject's
# true image in the target style should fall, the style classifier should assign more images
# to the target style, each by more than the range over training seeds and beyond the base's
# 95% interval over images. The distance to
# the base style's (Noto) true image is reported beside it, and the subject classifier's
# accuracy shows whether subjects stay recognisable.

# %% tags=["hide-input"]
show_table(result.check3, first=["style", "measure", "passes"])

# %% [markdown]
# Of the directional checks, {glue:text}`check3_pass` move the expected way by more than the
# seed-to-seed range and beyond the base's interval: {glue:text}`check3_verdict`.

# %% tags=["hide-input"]
show_table(result.verdicts, first=["style"])

# %% [markdown]
# Per style: {glue:text}`style_verdicts`. "Away from the base only" means the LoRA changed the
# images (they left the base style by more than the seed range) without bringing them closer to
# the target style: what a LoRA does when the base cannot draw what the style is made of.
#
# The checks that did not pass:

# %% tags=["hide-input"]
show_table(result.failing_checks(), first=["style", "measure"])

# %% tags=["hide-input"]
show_table(result.recognisable, first=["style", "recognisable"])

# %% [markdown]
# Subjects stay recognisable (the LoRA's subject accuracy within or above the base's interval)
# for {glue:text}`n_recognisable` styles. {glue:text}`recognisable_reading`
#
# ### How far toward the style: the share of the way
#
# A P(style) of 0.3 says little alone: the judge may give the true images only 0.5. So each
# style's effect is read as the share of the way from the base to the truth,
# $(P_\text{LoRA} - P_\text{base}) / (P_\text{true} - P_\text{base})$, where $P$ is the style
# judge's mean P(target style) on the held-out subjects: on the LoRA's images, on the base's
# images of the same prompts and seeds, and on the true target-style images of the same subjects
# after the base model's VAE (encoded to the latent mean and decoded: a generation can at best
# look like that). 0 is the base, 1 the truth. The interval is a bootstrap over subjects within
# each training seed, the same resampled subjects in all three terms, then a t-interval over the
# seeds. Beside it, the subject classifier's accuracy on the LoRA's images against the base's,
# and the targets of issue #15: a far style (OpenMoji, Fluent 3D) gets at least 0.75 of the way
# with subject accuracy within 10 points of the base's, over 3 seeds; the near style (Twemoji)
# moves its P(style) above the base's 95% interval.

# %% tags=["hide-input"]
show_table(result.share_table(), first=["style", "share of the way", "target", "verdict"])

# %% [markdown]
# Per style: {glue:text}`share_reading`. The targets hold for {glue:text}`share_targets_met`
# styles ({glue:text}`share_verdicts`).
#
# ### The blind check: can the judge name the style?
#
# The check a machine can run blind: shown one held-out image at a time, the style judge picks
# which of {glue:text}`blind_classes` it is (its own argmax, restricted to the book's styles;
# chance {glue:text}`blind_chance`). The share it names right is read for the LoRA's images
# (every seed pooled; `per_seed` lists each seed's share) between a ceiling, the true images after
# the VAE, and a floor, the base's images of the same prompts. Intervals are Wilson intervals
# over images.

# %% tags=["hide-input"]
show_table(result.blind, first=["style", "source", "value"])

# %% tags=["hide-input"]
if len(result.blind):
    figure = plots.interval_panels(result.blind, "source", panel="style", ylabel="named the target style",
                                   title=f"the style judge, blind, on held-out subjects; {result.profile.name} profile")
    for axis in range(len(figure.axes)):
        plots.reference_line(figure, float(result.blind["chance"].iloc[0]), "chance", axis)

# %% [markdown]
# Named right, per style: {glue:text}`blind_reading`.
#
# ### Cross-style control
#
# Each style's LoRA, on the held-out subjects, scored against every style's true images: its
# own style should win (lowest distance, highest P(style)). The own style wins in
# {glue:text}`cross_style_pass` (adapter, measure) pairs.

# %% tags=["hide-input"]
if len(result.cross_style):
    plots.heatmap(result.cross_style_matrix("feature_to_target"), reverse=True,
                  title=f"EffNet feature L2 to true images, held-out\n(rows: LoRA style; {result.profile.name} profile)")
    display(show_table(result.controls, first=["adapter", "measure", "passes"]))

# %% [markdown]
# ## Beside study S1
#
# S1's Exp. I reported, on its three anime style sets at 512 px with one seed and 100 images:
# FID fell with the LoRA, and CLIP score, IS and LPIPS diversity fell slightly. Its numbers
# (their data, their hardware, Inception FID and CLIP) cannot be compared with ours in value;
# only the directions can.

# %% tags=["hide-input"]
show_table(reported_table("S1", "I").pivot_table(index="setting", columns=["metric", "method"], values="value"),
           first=["setting"])

# %% tags=["hide-input"]
show_table(result.directions, first=["S1 metric", "agrees"])

# %% [markdown]
# Our directions agree with S1's in {glue:text}`s1_agree` of the metrics where S1's direction was
# the same in all three style sets. Where they differ, the reasons may be: a 32 px model with
# 10 M parameters instead of SD v1.5; emoji vendors instead of anime studios (the base already
# draws emoji, so a near style such as Twemoji has less room to move); EfficientNet-Lite0
# features instead of Inception (FD-EffNet values are not FID values); an AlignScore stand-in
# instead of CLIP. And S1's own numbers carry no intervals: with one seed, a difference as small
# as its CLIP 33.13 -> 32.93 may be noise.
#
# **Reading FD at this sample size.** A Fréchet distance on {glue:text}`n_eval` images with
# 1280-dimensional features is biased upward and its interval (over images) is wide; KID is
# unbiased. The paired distances and the classifier measures above answer the style question
# more directly.
#
# ## What this build shows
#
# The style verdicts are in the check-3 section above. The EffNet feature distance to the same
# subject's true target-style image {glue:text}`feature_reading`. The measures disagree in a telling way.
# The style classifier and ST-LPIPS look at colour, outline and texture, which the LoRA changes.
# The ImageNet features also respond to what the subject *is*. In the sample sheets, a LoRA
# repaints the base's drawing in the new style's palette and line weight, but it cannot draw
# detail that the base never learned to draw, and it blurs some the base did draw; the subject
# classifier's accuracies above measure that loss.
#
# This is the failure mode the toy-world issue predicted, "style on mush", at a smaller scale.
# The base draws the gist of a subject. In the tiny build this text was written from, styles that
# live in colour and line weight (OpenMoji's outlines, Fluent's palette) transferred. A style that
# differs from the base mostly in fine drawing (Twemoji, close to Noto) mostly moved generations
# away from the base. The verdicts above are recomputed with every build. S1's LoRAs, on
# SD v1.5, sat on a base that draws anime frames well. This is the main reason our directions
# differ from its FID, which improved with every LoRA.
