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
# This chapter records what the book was built with: library versions and device, the
# profile's settings, the style sets, and what the base model draws before any fine-tuning.

# %% tags=["parameters"]
profile = "tiny"  # smoke, tiny or sd15
n_samples = 8  # held-out subjects shown in the sample grids
seed = 0  # seed of the first sample

# %%
import pandas as pd
from myst_nb import glue

from lora_core.data import DataConfig, dataset_report
from lora_core.environment import environment_info
from lora_core.experiments.common import eval_set, style_folder
from lora_core.generate import generate_grid
from lora_core.metrics.style import load_true_images
from lora_core.models import load_base
from lora_core.plots import contact_sheet
from lora_core.profiles import get_profile
from lora_core.world import STYLE_SETS, true_images_dir
from lora_core.toy.check import checks_table, toy_base_checks

pd.set_option("display.max_colwidth", None)
settings = get_profile(profile)
glue("profile_name", settings.name, display=False)
glue("profile_description", settings.description, display=False)

# %% [markdown]
# This build used the **{glue:text}`profile_name`** profile: {glue:text}`profile_description`.
#
# ## Environment

# %%
pd.DataFrame(environment_info(settings.device).items(), columns=["component", "version"])

# %% [markdown]
# ## Profile settings

# %%
pd.DataFrame([(k, v, settings.help()[k]) for k, v in settings.to_dict().items()],
             columns=["setting", "value", "meaning"])

# %% [markdown]
# ## The base model

# %%
base = load_base(settings.base_model, seed=seed)
parameter_counts = {name: sum(p.numel() for p in getattr(base, name).parameters())
                    for name in ("unet", "text_encoder", "vae")}
pd.DataFrame({"parameters (M)": {k: round(v / 1e6, 2) for k, v in parameter_counts.items()},
              "random weights": base.random_weights})

# %% [markdown]
# ### Quality checks of the shipped tiny base
#
# Checks 1 and 2 are measured on the exported `models/tiny-sd` folder by
# `python -m lora_core.toy check` (its model card on the [data page](../data.md) explains them):
# (1) VAE reconstruction of Noto emoji held out of VAE training, (2) whether the base draws its
# subjects. Check 3, whether a style LoRA moves generations for held-out subjects toward its
# style, needs trained LoRAs: chapter 1 runs it, and its results are pasted below.

# %%
checks = toy_base_checks() if settings.base_model == "toy:base" else {}
if checks:
    glue("check2_ratio", f"{checks['check2_ratio']:.1f}x", display=False)
    glue("check2_target", f"within the target of at most {checks['check2_target_ratio']}x"
         if checks["check2_ratio"] <= checks["check2_target_ratio"] else
         f"above the target of at most {checks['check2_target_ratio']}x: the base draws the gist of a "
         "subject, not all its detail", display=False)
    glue("check2_subjects", f"{checks.get('check2_subject_category_accuracy_generated', float('nan')):.0%}",
         display=False)
    display(checks_table(checks))
else:
    glue("check2_ratio", "not measured (this profile does not use the shipped base)", display=False)
    glue("check2_target", "no target applies", display=False)
    glue("check2_subjects", "not measured", display=False)

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
# tokens; nothing may be skipped.

# %%
reports = {(style, split): dataset_report(DataConfig(folder=style_folder(style, split),
                                                     resolution=settings.resolution), base.tokenizer)
           for style in STYLE_SETS for split in ("train", "heldout")}
style_table = pd.DataFrame({key: report.summary() for key, report in reports.items()}).T
style_table.index.names = ["style", "split"]
glue("n_problem_files", sum(len(r.problems) for r in reports.values()), display=False)
style_table

# %% [markdown]
# Files with problems across all sets: {glue:text}`n_problem_files`.
#
# ## What the base model draws
#
# For held-out subjects, the real image in every vendor's style (the base model was trained on
# Noto) beside the base model's own generation from the subject's caption, without any
# trigger word. With the `smoke` profile the model is random and its images are noise.

# %%
subjects = eval_set("twemoji", "heldout", n_samples)
grid = generate_grid(base, prompts=list(subjects.captions), seeds=seed, steps=settings.inference_steps,
                     guidance_scales=settings.guidance_scale, resolution=settings.resolution)
vendors = ["noto"] + [style_set.vendor for style_set in STYLE_SETS.values()]
real = {vendor: load_true_images(subjects.subject_keys, true_images_dir(vendor), settings.resolution) for vendor in vendors}
images, rows = [], []
for vendor in vendors:
    images += [image.permute(1, 2, 0).numpy() for image in real[vendor]]
    rows += [{"source": f"real {vendor}", "subject": caption.split(",")[0]} for caption in subjects.captions]
images += grid.images
rows += [{"source": f"base model ({settings.name})", "subject": caption.split(",")[0]}
         for caption in subjects.captions]
figure = contact_sheet(images, pd.DataFrame(rows), rows="source", cols="subject", cell_inches=1.0,
                       title=f"held-out subjects: real styles vs the base model ({settings.name} profile, "
                             f"{settings.resolution} px, DDIM {settings.inference_steps} steps, "
                             f"CFG {settings.guidance_scale})")
