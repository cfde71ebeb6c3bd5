"""Chapter 0: what the book was built with, and what the base model draws before fine-tuning.

Library versions and device, the profile's settings, the base model's size, the shipped tiny
base's quality checks (``models/tiny-sd/checks.json``), a report on every style set, and a sheet
of held-out subjects: the real image in every vendor's style beside the base model's own
generation of the subject's caption. Nothing is trained.

    result = run_setup("tiny", n_samples=8)
    result.facts["found_check2"]           # the base's check 2, in one sentence

>>> check2_facts({})["check2_ratio"]
'not measured (this profile does not use the shipped base)'
>>> check2_facts({"check2_ratio": 2.27, "check2_target_ratio": 2.5,
...               "check2_subject_category_accuracy_generated": 0.39})["check2_target"]
'within the target of at most 2.5x'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.plots import Sheet
from lora_core.profiles import Profile

BASE_STYLE = "noto"  # the vendor the tiny base was pretrained on
SAMPLE_STYLE = "twemoji"  # whose held-out captions the sample sheet draws (every vendor has the subjects)


@dataclass(kw_only=True)
class SetupResult(ChapterResult):
    """Chapter 0's tables and sample sheet. Facts: ``profile_description``, ``check2_ratio``,
    ``check2_target``, ``check2_subjects``, ``n_style_sets``, ``n_problem_files`` and the sentences
    ``found_check2``, ``found_data``."""

    environment: pd.DataFrame
    settings: pd.DataFrame
    model_size: pd.DataFrame
    checks: pd.DataFrame
    style_sets: pd.DataFrame
    samples: Sheet


def settings_table(profile: Profile) -> pd.DataFrame:
    """One row per profile setting: its value and what it means."""
    meanings = profile.help()
    return pd.DataFrame([(key, value, meanings[key]) for key, value in profile.to_dict().items()],
                        columns=["setting", "value", "meaning"])


def model_size_table(base) -> pd.DataFrame:
    """Parameters (millions) of the UNet, text encoder and VAE, and whether the weights are random."""
    rows = [{"part": name, "parameters (M)": round(sum(p.numel() for p in getattr(base, name).parameters()) / 1e6, 2),
             "random weights": base.random_weights} for name in ("unet", "text_encoder", "vae")]
    return pd.DataFrame(rows)


def check2_facts(checks: dict[str, Any]) -> dict[str, str]:
    """Check 2 of the shipped base (``checks.json``) as text for the prose: the ratio of its
    generations' error to the VAE's own, whether that meets the target, and the subject
    classifier's accuracy on its generations; "not measured" when the profile uses another base."""
    if not checks:
        return {"check2_ratio": "not measured (this profile does not use the shipped base)",
                "check2_target": "no target applies", "check2_subjects": "not measured"}
    ratio, target = checks["check2_ratio"], checks["check2_target_ratio"]
    within = ratio <= target
    return {"check2_ratio": f"{ratio:.1f}x",
            "check2_target": f"within the target of at most {target}x" if within else
            f"above the target of at most {target}x: the base draws the gist of a subject, not all its detail",
            "check2_subjects": f"{checks.get('check2_subject_category_accuracy_generated', float('nan')):.0%}"}


def check2_sentence(checks: dict[str, Any]) -> str:
    """Check 2 in one sentence for the chapter's finding box.

    >>> check2_sentence({"check2_ratio": 3.4, "check2_target_ratio": 2.5,
    ...                  "check2_subject_category_accuracy_generated": 0.2}).split(":")[0]
    "The base's generations sit at 3.4x the VAE's round-trip error from the real images (above the target of at most 2.5x"
    """
    if not checks:
        return "This profile does not use the shipped tiny base, so its quality checks do not apply."
    facts = check2_facts(checks)
    return (f"The base's generations sit at {facts['check2_ratio']} the VAE's round-trip error from the real "
            f"images ({facts['check2_target']}), and the subject classifier recognises the category of "
            f"{facts['check2_subjects']} of them.")


def style_set_table(profile: Profile, tokenizer) -> tuple[pd.DataFrame, int]:
    """``lora_core.data.dataset_report`` of every style set's training and held-out split (one row
    each, caption lengths in the base's tokens) and the number of files with problems."""
    from lora_core.data import DataConfig, dataset_report
    from lora_core.experiments.common import style_folder
    from lora_core.world import STYLE_SETS

    reports = {(style, split): dataset_report(DataConfig(folder=style_folder(style, split),
                                                         resolution=profile.resolution), tokenizer)
               for style in STYLE_SETS for split in ("train", "heldout")}
    rows = [{"style": style, "split": split, **report.summary()} for (style, split), report in reports.items()]
    return pd.DataFrame(rows), sum(len(report.problems) for report in reports.values())


def data_sentence(n_sets: int, n_problems: int) -> str:
    """The style sets' report in one sentence.

    >>> data_sentence(3, 0)
    'All 3 style sets (training and held-out splits) load without a problem file.'
    >>> data_sentence(3, 2)
    '2 files of the 3 style sets have problems that would stop training: see the style-set table.'
    """
    if n_problems == 0:
        return f"All {n_sets} style sets (training and held-out splits) load without a problem file."
    return f"{n_problems} files of the {n_sets} style sets have problems that would stop training: see the style-set table."


def sample_sheet(base, profile: Profile, n_samples: int, seed: int) -> Sheet:
    """Held-out subjects: a row per vendor's real image and a row of the base model's generation
    from the subject's caption alone (no trigger word), a column per subject."""
    from lora_core.experiments.common import eval_set
    from lora_core.generate import generate_grid
    from lora_core.metrics.style import load_true_images
    from lora_core.world import true_images_dir
    from lora_core.world import STYLE_SETS

    subjects = eval_set(SAMPLE_STYLE, "heldout", n_samples)
    names = [caption.split(",")[0] for caption in subjects.captions]
    grid = generate_grid(base, prompts=list(subjects.captions), seeds=seed, samplers=profile.sampler,
                         steps=profile.inference_steps, guidance_scales=profile.guidance_scale,
                         resolution=profile.resolution)
    cells = []
    for vendor in [BASE_STYLE] + [style_set.vendor for style_set in STYLE_SETS.values()]:
        real = load_true_images(subjects.subject_keys, true_images_dir(vendor), profile.resolution)
        cells += [(image, {"source": f"real {vendor}", "subject": name}) for image, name in zip(real, names)]
    cells += [(image, {"source": f"base model ({profile.name})", "subject": name})
              for image, name in zip(grid.images, names)]
    title = (f"held-out subjects: real styles vs the base model ({profile.name} profile, {profile.resolution} px, "
             f"{profile.sampler} {profile.inference_steps} steps, CFG {profile.guidance_scale})")
    return Sheet.of(cells, rows="source", cols="subject", title=title)


def run_setup(profile: Profile | str = "tiny", *, base=None, n_samples: int = 8, seed: int = 0) -> SetupResult:
    """Chapter 0 (nothing trains, so there is no ``runs_root``): ``n_samples`` held-out subjects in
    the sample sheet, generated from ``seed`` (also the seed of a random base's weights)."""
    from lora_core.environment import environment_info
    from lora_core.models import load_base
    from lora_core.world import STYLE_SETS
    from lora_core.toy.check import checks_table, toy_base_checks

    settings = resolve_profile(profile)
    base = base if base is not None else load_base(settings.base_model, seed=seed)
    checks = toy_base_checks() if settings.base_model == "toy:base" else {}
    style_sets, n_problems = style_set_table(settings, base.tokenizer)
    result = SetupResult(
        settings, environment=pd.DataFrame(environment_info(settings.device).items(), columns=["component", "version"]),
        settings=settings_table(settings), model_size=model_size_table(base),
        checks=checks_table(checks) if checks else pd.DataFrame(columns=["check", "value"]),
        style_sets=style_sets, samples=sample_sheet(base, settings, n_samples, seed))
    result.add_facts(profile_description=settings.description, **check2_facts(checks), n_style_sets=len(STYLE_SETS),
                     n_problem_files=n_problems, found_check2=check2_sentence(checks),
                     found_data=data_sentence(len(STYLE_SETS), n_problems))
    return result
