"""Does a cheaper sampler give the images of the current one? Paired measures on the same prompts,
seeds and weights, and the rule that decides.

Each candidate setting (sampler, steps) generates the same prompts from the same seeds as the
current setting, and is compared with it image by image on what the book reports:

- ``p_target_style``: the style classifier's P(target style);
- ``subject_hit``: whether the subject classifier names the subject's category;
- ``error_to_reference``: RMS pixel difference (0-255) to a many-step image, for information
  only: the samplers do not start from the same noise level (with the base's "leading" timestep
  spacing DDIM with 20 steps starts at t=951, DPM-Solver++ with 10 at t=901), so no setting here
  is the converged version of another.

Each row is a mean over images with a 95% bootstrap interval; ``difference`` rows are paired
differences candidate - current. KID-EffNet between the candidate's and the current images is
set beside the same distance between the current images and the current sampler's own images at
other seeds (:func:`distribution_rows`): the floor that seeds alone make.

>>> rows = pd.DataFrame([
...     {"setting": "DPM++ 2M 10", "measure": "p_target_style", "kind": "difference", "value": 0.0,
...      "ci_low": -0.02, "ci_high": 0.03},
...     {"setting": "DPM++ 2M 10", "measure": "subject_hit", "kind": "difference", "value": 0.0,
...      "ci_low": -0.04, "ci_high": 0.02},
...     {"setting": "DPM++ 2M 10", "measure": "kid_effnet", "kind": "to DDIM 20", "value": 0.001,
...      "ci_low": 0.0, "ci_high": 0.002},
...     {"setting": "DDIM 20 other seeds", "measure": "kid_effnet", "kind": "to DDIM 20", "value": 0.004,
...      "ci_low": 0.003, "ci_high": 0.005}])
>>> replaces_current(rows, "DPM++ 2M 10", "DDIM 20 other seeds")
(True, 'P(style) and subject accuracy within ±0.05; KID-EffNet to the current images 0.001 <= 0.004 of other seeds')
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from lora_core.experiments.common import EvalSet
from lora_core.metrics.stats import bootstrap_result

MEASURE_MARGIN = 0.05    # largest tolerated change in P(style) or subject accuracy (paired, 95% interval)


def setting_name(sampler: str, steps: int) -> str:
    """``"DPM++ 2M 10"``: the sampler's A1111 name and its steps."""
    return f"{sampler} {steps}"


def rms_error(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Per-image RMS difference of uint8 images (0-255 scale).

    >>> rms_error(torch.full((1, 3, 2, 2), 10, dtype=torch.uint8), torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    array([10.])
    """
    return (images.double() - reference.double()).pow(2).flatten(1).mean(1).sqrt().numpy()


def per_image_measures(images: torch.Tensor, eval_set: EvalSet, target_style: str, evaluator) -> dict[str, np.ndarray]:
    """P(target style) and subject hit (0/1) of each image, from the evaluator's heads."""
    from lora_core.experiments.evaluate import _at_resolution
    from lora_core.world import style_vendor

    style_head, subject_head = evaluator.style_classifier, evaluator.subject_classifier
    if style_head is None or subject_head is None:
        raise FileNotFoundError(f"the style and subject classifiers are needed: {evaluator.unavailable}")
    p_style = style_head.predict_proba(_at_resolution(images, style_head.resolution))
    p_subject = subject_head.predict_proba(_at_resolution(images, subject_head.resolution))
    truth = torch.tensor([subject_head.classes.index(subject_head.group_of[k]) for k in eval_set.subject_keys])
    vendor = style_head.classes.index(style_vendor(target_style, "target_style"))
    return {"p_target_style": p_style[:, vendor].double().numpy(),
            "subject_hit": (p_subject.argmax(-1) == truth).double().numpy()}


def _row(setting: str, measure: str, kind: str, values: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    result = bootstrap_result(measure, "", values, n_resamples=n_resamples, generator=torch.Generator().manual_seed(seed))
    return {"setting": setting, "measure": measure, "kind": kind, "n": len(values), "value": result.value,
            "ci_low": result.ci_low, "ci_high": result.ci_high}


def paired_rows(measures: dict[str, dict[str, np.ndarray]], current: str, n_resamples: int = 1000,
                seed: int = 0) -> pd.DataFrame:
    """For each setting's per-image measures (pooled over adapters): the mean of each measure
    (``kind="mean"``) and, for every setting but ``current``, its paired difference to ``current``
    (``kind="difference"``), each with a 95% bootstrap interval over images."""
    rows = []
    for setting, values in measures.items():
        for measure, per_image in values.items():
            rows.append(_row(setting, measure, "mean", per_image, n_resamples, seed))
            if setting != current and measure in measures[current]:
                rows.append(_row(setting, measure, "difference", per_image - measures[current][measure],
                                 n_resamples, seed))
    return pd.DataFrame(rows)


def distribution_rows(features: dict[str, np.ndarray], current: str, other_seeds: str, n_resamples: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """FD- and KID-EffNet of every setting's images to the current setting's images; the
    ``other_seeds`` setting (the current sampler at other seeds) gives the floor that seeds alone
    make."""
    from lora_core.metrics.backbones import get_backbone
    from lora_core.metrics.distributions import fd_result, kid_result

    net, rows = get_backbone("effnet-lite0"), []
    for setting, fake in features.items():
        if setting == current:
            continue
        for measure, result in (("fd_effnet", fd_result), ("kid_effnet", kid_result)):
            outcome = result(features[current], fake, net, "32", n_resamples=n_resamples,
                             generator=torch.Generator().manual_seed(seed))
            rows.append({"setting": setting, "measure": measure, "kind": f"to {current}", "n": outcome.n,
                         "value": outcome.value, "ci_low": outcome.ci_low, "ci_high": outcome.ci_high,
                         "floor": setting == other_seeds})
    return pd.DataFrame(rows)


def replaces_current(rows: pd.DataFrame, candidate: str, other_seeds: str,
                     measure_margin: float = MEASURE_MARGIN) -> tuple[bool, str]:
    """Whether ``candidate`` may replace the current setting, and why: the paired differences of
    P(style) and subject accuracy lie within ±``measure_margin`` (95% intervals), and its images are
    no further from the current images (KID-EffNet) than the current sampler's at ``other_seeds``."""
    differences = rows[(rows.setting == candidate) & (rows.kind == "difference")].set_index("measure")
    kid = rows[rows.measure == "kid_effnet"].set_index("setting")["value"]
    reasons = []
    for measure, label in (("p_target_style", "P(style)"), ("subject_hit", "subject accuracy")):
        low, high = differences.loc[measure, ["ci_low", "ci_high"]]
        if low < -measure_margin or high > measure_margin:
            reasons.append(f"{label} moves by more than ±{measure_margin:g}")
    distance = f"KID-EffNet to the current images {kid[candidate]:.3g}"
    if kid[candidate] > kid[other_seeds]:
        reasons.append(f"{distance} > {kid[other_seeds]:.3g} of other seeds")
    if reasons:
        return False, "; ".join(reasons)
    return True, (f"P(style) and subject accuracy within ±{measure_margin:g}; "
                  f"{distance} <= {kid[other_seeds]:.3g} of other seeds")
