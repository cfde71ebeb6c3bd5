"""Image metrics with their sample size and uncertainty attached.

- :mod:`~lora_core.metrics.preprocess`: one path from images to backbone inputs.
- :mod:`~lora_core.metrics.backbones`: Inception 2015 (FID), EfficientNet-Lite0, raw pixels.
- :mod:`~lora_core.metrics.distributions`: Fréchet distance, KID, Inception Score (pure + stateful).
- :mod:`~lora_core.metrics.lpips`: shift-tolerant LPIPS (offline), LPIPS (GPU profile).
- :mod:`~lora_core.metrics.diversity`: Vendi score, intra-set LPIPS diversity.
- :mod:`~lora_core.metrics.small_sample`: FD and KID at small n: bands over draws, rank limit, FD_inf.
- :mod:`~lora_core.metrics.memorisation`: copy share, Meehan et al.'s data-copying test, pixel check.
- :mod:`~lora_core.metrics.stats`: :class:`MetricResult`, bootstrap intervals, seed aggregation.
- :mod:`~lora_core.metrics.cache`: features cached by content hash.

Submodules are imported on use: ``from lora_core.metrics.backbones import get_backbone``.
"""
