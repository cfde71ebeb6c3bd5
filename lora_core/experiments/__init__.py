"""The book's experiments: one place that builds their configs, evaluation sets and tables.

- :mod:`~lora_core.experiments.common`: ``TrainConfig`` builders from a profile (so identical
  settings hash identically across chapters), evaluation sets (training captions, held-out
  captions, unseen prompts), seeds, cached generation.
- :mod:`~lora_core.experiments.evaluate`: generated images + reference images -> one tidy
  table of :class:`~lora_core.metrics.stats.MetricResult` rows; aggregation over seeds; the
  studies' reported numbers.
- :mod:`~lora_core.experiments.benchmark` (chapter 1), :mod:`~lora_core.experiments.methods`
  (chapter 3), and the other chapters' modules.
"""
