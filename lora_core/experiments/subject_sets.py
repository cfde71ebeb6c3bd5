"""Part II's subject sets (``lora_core.world.SUBJECT_SETS``): their folders, what each held-out
subject is used for, a fixed validation folder, and evaluation sets of held-out subjects.

A subject set is a kohya folder pair ``data/sets/<name>/{train,heldout}`` (``<key>.png`` and a
``<key>.txt`` caption with the set's trigger word). Chapters split its held-out subjects once,
deterministically, into scored subjects and validation images, so the validation loss never
sees a subject the measures score:

>>> plan = held_out_plan([f"k{i}" for i in range(10)], n_eval=4, n_validation=3, n_kit=2)
>>> plan.eval_keys, plan.validation_keys, plan.kit_keys
(('k1', 'k4', 'k5', 'k7'), ('k0', 'k3', 'k9'), ('k1', 'k4'))
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from lora_core.experiments.common import EVAL_SELECTION_SEED, EvalSet, captioned_eval_set
from lora_core.io import atomic_folder


def set_folder(name: str, split: str) -> Path:
    """``data/sets/<name>/<split>`` of a subject set (``lora_core.world.SUBJECT_SETS``), absolute."""
    from lora_core.paths import resolve
    from lora_core.world import SUBJECT_SETS

    if name not in SUBJECT_SETS:
        raise ValueError(f"subject_set: unknown subject set {name!r}. Valid: {', '.join(SUBJECT_SETS)}")
    folder = resolve(SUBJECT_SETS[name].folder(split))
    if not any(folder.glob("*.png")):
        raise FileNotFoundError(f"{folder}: no images; build the data sets with `python -m lora_core.toy build`")
    return folder


@dataclass(frozen=True)
class HeldOutPlan:
    """What each held-out subject is used for: scored, validation, or shown in the study kit."""

    eval_keys: tuple[str, ...]
    validation_keys: tuple[str, ...]
    kit_keys: tuple[str, ...]


def held_out_plan(keys: Sequence[str], n_eval: int, n_validation: int, n_kit: int) -> HeldOutPlan:
    """A seeded permutation of the held-out ``keys``: its first ``n_eval`` are scored, the next
    ``n_validation`` make the validation folder (disjoint from the scored ones), each kept in key
    order; the kit shows the first ``n_kit`` scored subjects.

    >>> plan = held_out_plan([f"k{i}" for i in range(6)], n_eval=3, n_validation=2, n_kit=2)
    >>> set(plan.eval_keys) & set(plan.validation_keys), len(plan.eval_keys), plan.kit_keys == plan.eval_keys[:2]
    (set(), 3, True)
    """
    keys = sorted(keys)
    if n_eval < 1 or n_eval + n_validation > len(keys):
        raise ValueError(f"held-out split: {len(keys)} held-out subjects cannot give {n_eval} scored and "
                         f"{n_validation} validation subjects")
    if not 1 <= n_kit <= n_eval:
        raise ValueError(f"n_kit_subjects must be in [1, n_eval={n_eval}], got {n_kit}")
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(EVAL_SELECTION_SEED)).tolist()
    scored = tuple(keys[i] for i in sorted(order[:n_eval]))
    validation = tuple(keys[i] for i in sorted(order[n_eval:n_eval + n_validation]))
    return HeldOutPlan(scored, validation, scored[:n_kit])


def validation_folder(source: Path, keys: Sequence[str], cache_root: Path, write: bool = True) -> Path:
    """The folder of the ``keys``' images and captions copied from ``source``, named by their
    content under ``cache_root`` and written once, whole (``io.atomic_folder``); ``write=False``
    only names it."""
    files = [source / f"{key}{suffix}" for key in sorted(keys) for suffix in (".png", ".txt")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: validation files missing: {', '.join(missing[:5])}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    folder = cache_root / f"validation-{digest.hexdigest()[:16]}"
    if write and not folder.is_dir():
        with atomic_folder(folder) as staging:
            for path in files:
                shutil.copy2(path, staging / path.name)
    return folder


def subject_eval_set(folder: Path, keys: Sequence[str], suffix: str, style: str,
                     name: str = "held-out subjects") -> EvalSet:
    """The subjects ``keys`` of ``folder`` as an evaluation set: their captions (the set's trigger
    phrase ``suffix`` included) as prompts, the captions without it as subject text."""
    return captioned_eval_set(name, style, [folder / f"{key}.txt" for key in keys], suffix)
