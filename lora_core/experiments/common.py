"""Configs, evaluation sets, seeds and cached generation shared by every chapter of the book.

**One function builds each kind of run**, so two chapters that ask for the same settings get
the same ``TrainConfig`` and therefore the same config hash and run folder (chapter 1's style
LoRAs are chapter 4's inputs; one cell of chapter 2's grid is chapter 1's config):

>>> from lora_core.profiles import get_profile
>>> smoke = get_profile("smoke")
>>> a = style_lora_config(smoke, "twemoji", seed=1)
>>> b = style_lora_config(smoke, "twemoji", seed=1, lora={"rank": smoke.lora_rank})
>>> a.hash() == b.hash(), a.options.rank, a.options.scale, a.data.folder
(True, 4, 1.0, 'data/styles/twemoji/train')
>>> method_config(smoke, "textual_inversion", "twemoji").learning_rate   # S1's 5e-3 x the profile's lr scale
0.005

Evaluation sets pair every prompt with a generation seed (the same for the base and every
adapter, so images compare pairwise) and, where a true image exists, the subject key:

>>> held_out = eval_set("twemoji", "heldout", n=3)
>>> held_out.name, len(held_out), held_out.prompts[0].endswith("in the style of twmj"), held_out.seeds
('held-out captions', 3, True, (1000, 1001, 1002))
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from lora_core.data import DataConfig
from lora_core.models import base_fingerprint
from lora_core.profiles import Profile
from lora_core.train import TrainConfig

STUDY_LORA_LR = 1e-4            # S1's LoRA learning rate: the unit of every profile's lr scale
S1_METHOD_LR = {"lora": 1e-4, "textual_inversion": 5e-3, "dreambooth": 1e-4, "dreambooth_text_encoder": 5e-6,
                "loha": 1e-4, "lokr": 1e-4}
S1_METHOD_RANK = 32             # S1 Exp. III trained its LoRA at rank 32 (Exp. I: the profile's rank)
METHODS = ("lora", "textual_inversion", "dreambooth", "loha", "lokr")
GENERATION_SEED_START = 1000    # generation seeds never coincide with training seeds 0, 1, 2, ...
EVAL_SELECTION_SEED = 0         # which captions an evaluation set takes when it takes fewer than all
SPLITS = {"train": "training captions", "heldout": "held-out captions"}
# Subjects no emoji in the toy world shows, written like the catalogue's captions: does the style
# reach prompts outside the training distribution?
UNSEEN_SUBJECTS = (
    "a blue cat", "a red car on a road", "a green apple with a leaf", "a yellow star with a face",
    "a smiling sun wearing sunglasses", "a purple umbrella in the rain", "a dog playing guitar",
    "a house with a red roof", "a robot holding a flower", "an orange fish in a bowl",
    "a snowman with a hat", "a rocket above the moon", "a pink cake with candles", "a tree on a hill",
    "a black bird on a branch", "a cup of hot tea", "a bicycle with a basket", "a lion with a crown",
    "a blue whale jumping", "a castle on a cloud", "a green frog on a leaf", "a sleeping panda",
    "a red balloon tied to a chair", "a white sailboat at sea", "a turtle wearing a helmet",
    "a golden key", "a ghost holding a lantern", "a heart made of flowers", "a penguin with a scarf",
    "a volcano at night", "a bowl of noodles", "a violin and a bow",
)


def data_dir() -> Path:
    from lora_core.world import DATA_DIR

    return DATA_DIR


def style_folder(style: str, split: str = "train") -> str:
    """The style set's folder as a path relative to the repository when it lies inside it (run
    hashes then do not depend on where the repository is checked out).

    >>> style_folder("openmoji", "heldout")
    'data/styles/openmoji/heldout'
    """
    from lora_core.world import STYLE_SETS

    if style not in STYLE_SETS:
        raise ValueError(f"style: unknown style set {style!r}. Valid: {', '.join(STYLE_SETS)}")
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    return repo_relative(data_dir() / "styles" / style / split)


def repo_relative(folder: str | Path) -> str:
    """``folder`` relative to the repository when it lies inside it, else as given (absolute):
    run configs that name it then hash alike wherever the repository is checked out.

    >>> from lora_core.paths import REPO_ROOT
    >>> repo_relative(REPO_ROOT / "data" / "sets"), repo_relative("/elsewhere/images")
    ('data/sets', '/elsewhere/images')
    """
    from lora_core.paths import REPO_ROOT

    folder = Path(folder)
    try:
        return folder.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return folder.as_posix()


def lr_scale(profile: Profile) -> float:
    """How much the profile scales the studies' learning rates (tiny: 10x, see ``profiles``)."""
    return profile.learning_rate / STUDY_LORA_LR


def training_seeds(profile: Profile) -> list[int]:
    """Training seeds 0..n_seeds-1 of the profile."""
    return list(range(profile.n_seeds))


# ---------------------------------------------------------------------------------------------
# run configs


def _train_fields(profile: Profile, style: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    fields = {"data": DataConfig(folder=style_folder(style, "train"), resolution=profile.resolution),
              "base_model": profile.base_model, "seed": seed, "max_train_steps": profile.train_steps,
              "batch_size": profile.batch_size, "learning_rate": profile.learning_rate,
              "mixed_precision": profile.mixed_precision, "optimizer": profile.optimizer,
              "gradient_accumulation_steps": profile.gradient_accumulation_steps,
              "gradient_checkpointing": profile.gradient_checkpointing,
              "checkpoint_every_steps": profile.checkpoint_every_steps}
    fields.update(overrides)
    return fields


def style_lora_config(profile: Profile, style: str, seed: int = 0, lora: dict[str, Any] | None = None,
                      **overrides) -> TrainConfig:
    """The style LoRA of every chapter: the profile's rank, alpha, targets, lr, steps and batch on
    ``data/styles/<style>/train``. ``lora`` overrides ``LoraOptions`` fields (``{"rank": 32}``,
    ``{"alpha": None, "alpha_per_rank": 1.0}`` to tie alpha to the rank); other keyword
    arguments override ``TrainConfig`` fields (``learning_rate=5e-4``)."""
    options = {"rank": profile.lora_rank, "alpha": profile.lora_alpha, "target_modules": profile.lora_targets,
               **(lora or {})}
    return TrainConfig(method="lora", options=options, **_train_fields(profile, style, seed, overrides))


def method_config(profile: Profile, method: str, style: str, seed: int = 0, **overrides) -> TrainConfig:
    """Chapter 3's runs with S1's settings (Exp. III), learning rates times :func:`lr_scale`.

    ``lora``: rank 32 at the profile's alpha; ``textual_inversion``: one vector replacing the
    style's trigger word, lr 5e-3; ``dreambooth``: full UNet at 1e-4 and text encoder at 5e-6;
    ``loha``/``lokr``: LyCORIS on the transformer blocks (attention + feed-forward), lr 1e-4.
    """
    from lora_core.world import STYLE_SETS

    scale = lr_scale(profile)
    if method == "lora":
        return style_lora_config(profile, style, seed, lora={"rank": S1_METHOD_RANK}, **overrides)
    if method == "textual_inversion":
        options = {"placeholder_token": f"<{style}-style>", "trigger_word": STYLE_SETS[style].trigger}
        fields = {"method": method, "options": options, "learning_rate": S1_METHOD_LR[method] * scale}
    elif method == "dreambooth":
        fields = {"method": method, "options": {"train_text_encoder": True},
                  "learning_rate": S1_METHOD_LR[method] * scale,
                  "text_encoder_learning_rate": S1_METHOD_LR["dreambooth_text_encoder"] * scale}
    elif method in ("loha", "lokr"):
        # LoHa's rank r reaches rank r^2 (a Hadamard product of two rank-r products), so half the
        # LoRA rank gives it at least the same capacity; LoKr's factor -1 balances its Kronecker factors.
        rank = max(1, profile.lora_rank // 2) if method == "loha" else profile.lora_rank
        options = {"algo": method, "rank": rank, "alpha": float(rank), "preset": "attn-mlp", "conv_rank": 0}
        fields = {"method": "lycoris", "options": options, "learning_rate": S1_METHOD_LR[method] * scale}
    else:
        raise ValueError(f"method: unknown method {method!r}. Valid: {', '.join(METHODS)}")
    fields.update(overrides)
    return TrainConfig(**_train_fields(profile, style, seed, fields))


def config_table(configs: dict[str, TrainConfig]) -> "pd.DataFrame":
    """One row per named config: hash, method, seed, steps, batch, learning rates, method options."""
    import pandas as pd

    rows = []
    for label, config in configs.items():
        options = {k: v for k, v in config.options.to_dict().items() if k not in ("target_modules",
                                                                                "text_encoder_target_modules")}
        if hasattr(config.options, "scale"):
            options["scale"] = config.options.scale
        rows.append({"run": label, "config_hash": config.hash(), "method": config.method, "seed": config.seed,
                     "steps": config.max_train_steps, "batch": config.batch_size, "lr": config.learning_rate,
                     "text_encoder_lr": config.text_encoder_learning_rate, "data": config.data.folder,
                     "resolution": config.data.resolution, "options": json.dumps(options, sort_keys=True)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# evaluation sets


@dataclass(frozen=True)
class EvalSet:
    """Prompts to generate, with their seeds, plain subject captions and subject keys.

    ``prompts`` are what the model sees (the subject caption in the style's caption template,
    trigger word included); ``captions`` are the subject text alone, for prompt alignment;
    ``subject_keys`` name the emoji whose true images (in every vendor's style) pair with each
    prompt, or are empty for prompts without a true image (unseen prompts).
    """

    name: str
    style: str
    prompts: tuple[str, ...]
    captions: tuple[str, ...]
    seeds: tuple[int, ...]
    subject_keys: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def paired(self) -> bool:
        return bool(self.subject_keys)


def _selection(n_available: int, n: int) -> list[int]:
    """``n`` of ``n_available`` positions (all when n >= n_available), seeded, in file order."""
    if n >= n_available:
        return list(range(n_available))
    generator = torch.Generator().manual_seed(EVAL_SELECTION_SEED)
    return sorted(torch.randperm(n_available, generator=generator)[:n].tolist())


def style_prompt(style: str, caption: str) -> str:
    """``caption`` in the style sets' caption template with the style's trigger word.

    >>> style_prompt("openmoji", "a blue cat")
    'a blue cat, in the style of opnmj'
    """
    from lora_core.world import STYLE_CAPTION_TEMPLATE, STYLE_SETS

    return STYLE_CAPTION_TEMPLATE.format(caption=caption, trigger=STYLE_SETS[style].trigger)


def eval_set(style: str, split: str, n: int) -> EvalSet:
    """``n`` captions of ``data/styles/<style>/<split>`` (``train`` or ``heldout``) or, with
    ``split="unseen"``, ``n`` prompts about subjects no emoji shows (at most
    ``len(UNSEEN_SUBJECTS)``)."""
    if n < 1:
        raise ValueError(f"n: an evaluation set needs at least one prompt, got {n}")
    if split == "unseen":
        subjects = [UNSEEN_SUBJECTS[i] for i in _selection(len(UNSEEN_SUBJECTS), n)]
        return EvalSet("unseen prompts", style, tuple(style_prompt(style, s) for s in subjects), tuple(subjects),
                       tuple(GENERATION_SEED_START + i for i in range(len(subjects))))
    from lora_core.paths import REPO_ROOT

    folder = Path(style_folder(style, split))
    folder = folder if folder.is_absolute() else REPO_ROOT / folder
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{folder}: no captions; build the toy world with `python -m lora_core.toy build`")
    files = [files[i] for i in _selection(len(files), n)]
    return captioned_eval_set(SPLITS[split], style, files, style_prompt(style, ""))


def captioned_eval_set(name: str, style: str, caption_files: list[Path], suffix: str) -> EvalSet:
    """An evaluation set of the subjects whose kohya captions (``<key>.txt``) are ``caption_files``,
    in that order: the caption is the prompt, the caption without ``suffix`` (the style's trigger
    phrase) the subject text, the file stem the subject key."""
    prompts = [f.read_text(encoding="utf-8").splitlines()[0].strip() for f in caption_files]
    captions = [p[: -len(suffix)] if suffix and p.endswith(suffix) else p for p in prompts]
    return EvalSet(name, style, tuple(prompts), tuple(captions),
                   tuple(GENERATION_SEED_START + i for i in range(len(caption_files))),
                   tuple(f.stem for f in caption_files))


def eval_sets(style: str, profile: Profile) -> dict[str, EvalSet]:
    """The three sets of chapter 1 at the profile's size: ``train``, ``heldout``, ``unseen``."""
    n = profile.n_eval_images
    return {split: eval_set(style, split, n) for split in ("train", "heldout", "unseen")}


# ---------------------------------------------------------------------------------------------
# generation with a cache on disk


def generation_cache_dir() -> Path:
    return data_dir() / "cache" / "generated"


def features_cache():
    """The features cache on disk (``data/cache/features``) that every process of a chapter shares."""
    from lora_core.metrics.cache import FeatureCache

    return FeatureCache(data_dir() / "cache" / "features")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers and transformers at ERROR level and without progress bars, then back as they
    were. Loading a UNet-only LoRA logs "No LoRA keys associated to CLIPTextModel" per file, a
    saved model logs dtype notes and progress bars per load and save (diffusers' and transformers'
    "Loading weights", "Writing model shards"): expected here, and they would bury a notebook's output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error(), transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar(), transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0]), transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


@dataclass(frozen=True)
class EvalRequest:
    """One set of images to generate: ``prompts`` with their own ``seeds``, with a LoRA file
    (``adapter``), several at their weights (``{file: weight}``, active together) or without
    (``None``: the base), and other ``generate.Cell`` fields for every image (``settings``:
    ``negative_prompt``, ``clip_skip``, ``sampler``, ``steps``, ``guidance_scale``; the profile's
    sampler, steps and guidance by default)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    adapter: Any = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.seeds):
            raise ValueError(f"prompts and seeds must pair up: {len(self.prompts)} prompts, {len(self.seeds)} seeds")

    def cells(self, profile: Profile) -> list:
        from lora_core.generate import Cell, adapter_entry

        adapters, label = adapter_entry(self.adapter)
        settings = {"sampler": profile.sampler, "steps": profile.inference_steps,
                    "guidance_scale": profile.guidance_scale, **self.settings}
        return [Cell(prompt=p, seed=int(s), adapters=adapters, adapter=label, **settings)
                for p, s in zip(self.prompts, self.seeds)]

    def cache_path(self, base, cells: list, folder: Path) -> Path:
        """Where these images are cached: a key made of the base weights, the adapter files' content
        (``formats.content_digest``) and weights, and every cell's prompt, seed and settings."""
        from lora_core.formats import content_digest

        adapters = cells[0].adapters if cells else ()
        # one file at weight 1 keeps the key it always had (caches stay valid); weights enter the key otherwise
        adapter_key = (content_digest(adapters[0][0]) if len(adapters) == 1 and adapters[0][1] == 1.0
                       else [[content_digest(path), weight] for path, weight in adapters] or None)
        key_source = json.dumps({"base": base_fingerprint(base), "adapter": adapter_key,
                                 "cells": [c.replace(adapters=(), adapter="").to_dict() for c in cells],
                                 "resolution": base.resolution}, sort_keys=True)
        return folder / f"{hashlib.sha256(key_source.encode()).hexdigest()[:32]}.safetensors"


def generate_eval_sets(base, requests: list[EvalRequest], profile: Profile, batch_size: int | None = None,
                       cache_dir: str | Path | None = None) -> list[torch.Tensor]:
    """uint8 (N, 3, R, R) images of each request (the profile's sampler), in one
    ``generate.generate_cells`` call for all requests not cached yet, so a LoRA file the requests
    share (at several weights, say) is loaded once. Each request is cached in ``data/cache/generated`` on its own key
    (:meth:`EvalRequest.cache_path`), so re-running a notebook for a new plot, or after retraining
    the same config, regenerates nothing."""
    from lora_core.formats.safetensors_file import save_safetensors
    from lora_core.generate import generate_cells
    from lora_core.io import read_safetensors
    from lora_core.metrics.preprocess import as_uint8_images

    folder = Path(cache_dir) if cache_dir is not None else generation_cache_dir()
    planned = [(cells, request.cache_path(base, cells, folder)) for request in requests
               for cells in [request.cells(profile)]]
    missing = [i for i, (_, path) in enumerate(planned) if not path.is_file()]
    made = {}
    if missing:
        with quiet_libraries():
            grid = generate_cells(base, [c for i in missing for c in planned[i][0]],
                                  batch_size=batch_size or profile.generation_batch_size)
        images = as_uint8_images(grid.images, "generated")
        folder.mkdir(parents=True, exist_ok=True)
        for i in missing:
            made[i], images = images[:len(planned[i][0])], images[len(planned[i][0]):]
            save_safetensors(planned[i][1], {"images": made[i].contiguous()})
    return [made[i] if i in made else read_safetensors(path)[0]["images"] for i, (_, path) in enumerate(planned)]


def generate_eval_images(base, prompts, seeds, profile: Profile, adapter: str | Path | Mapping | None = None,
                         batch_size: int | None = None, cache_dir: str | Path | None = None,
                         **cell_settings) -> torch.Tensor:
    """uint8 (N, 3, R, R) images of ``prompts`` with their own ``seeds`` (the profile's sampler, steps
    and guidance), with a LoRA file (``adapter``), several at their weights (``{file: weight}``,
    active together) or without (the base); ``cell_settings`` are other ``generate.Cell`` fields.
    Cached as :func:`generate_eval_sets` caches (one request)."""
    request = EvalRequest(tuple(prompts), tuple(int(s) for s in seeds), adapter, cell_settings)
    return generate_eval_sets(base, [request], profile, batch_size, cache_dir)[0]
