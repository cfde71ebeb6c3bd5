# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Setup: environment, profile and base model
#
# This chapter records what the book was built with: library versions and device, the
# profile's settings, and samples from the base model before any fine-tuning.

# %% tags=["parameters"]
profile = "tiny"  # smoke, tiny or sd15
n_samples = 8  # images in the base-model sample grid
seed = 0  # first seed of the sample grid

# %%
import pandas as pd
import torch
from myst_nb import glue

from lora_core.environment import environment_info
from lora_core.models import load_base
from lora_core.profiles import get_profile

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
pd.DataFrame([(k, v, get_profile(profile).help()[k]) for k, v in settings.to_dict().items()],
             columns=["setting", "value", "meaning"])

# %% [markdown]
# ## The base model

# %%
base = load_base(settings.base_model, seed=seed)
parameter_counts = {name: sum(p.numel() for p in getattr(base, name).parameters())
                    for name in ("unet", "text_encoder", "vae")}
glue("base_source", base.source, display=False)
pd.DataFrame({"parameters (M)": {k: round(v / 1e6, 2) for k, v in parameter_counts.items()},
              "random weights": base.random_weights})

# %% [markdown]
# ## Samples from the base model
#
# The same prompts and seeds are used in every later chapter's baseline. With the `smoke`
# profile the model is random and the images are noise.

# %%
import matplotlib.pyplot as plt

prompts = ["grinning face", "red heart", "cat face", "thumbs up", "sun", "pizza", "car", "tree"][:n_samples]
pipe = base.pipeline()
images = [pipe(p, num_inference_steps=settings.inference_steps, guidance_scale=settings.guidance_scale,
               generator=torch.Generator().manual_seed(seed + i)).images[0] for i, p in enumerate(prompts)]
figure, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2))
for ax, image, prompt in zip(axes, images, prompts):
    ax.imshow(image)
    ax.set_title(prompt, fontsize=8)
    ax.axis("off")
figure.suptitle(f"base model samples ({settings.name} profile, {base.resolution} px)", fontsize=9)
plt.show()
