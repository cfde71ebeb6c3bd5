# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Rank x learning-rate ablation
#
# This chapter is being written.

# %% tags=["parameters"]
profile = "tiny"  # smoke, tiny or sd15
