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
# This chapter is being written.

# %% tags=["parameters"]
profile = "tiny"  # smoke, tiny or sd15
