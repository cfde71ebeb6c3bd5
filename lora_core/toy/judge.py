"""The style judge: which vendor drew a 32 px image, judged as generations look.

Every style claim of the book is capped by the classifier that reads it. The judge is a small
CNN (:class:`lora_core.metrics.heads.ImageClassifier`) trained on the pixels of **VAE round
trips** (``models/tiny-sd``'s VAE) of the true images of every vendor at the book's 32 px:
generations are decoded by that VAE, so the judge sees what they look like.

**Split by subject, deterministic.** Held out: every subject of the style sets
(``data/styles/*``, the subjects the book trains on and generates, chosen by the build's hash
order of their keys); the judge never sees them, and its card's accuracy is measured on their
round trips in every vendor. Every other base subject (no skin-tone variants, no swatches)
trains, except a hash-ordered tenth of them (salt ``style-judge/validation``) that chose the
settings; the held-out subjects chose nothing.

**Training.** AdamW with a linear warmup and cosine decay, label smoothing. Each epoch shows every
training image once, as its mean round trip or one of its sampled round trips (a latent drawn
from the VAE posterior), shifted by up to ``max_shift`` px and mirrored at random. It resumes
exactly: round trips are cached by content, every epoch's order and augmentation come from a
generator seeded by (seed, epoch), and a checkpoint after every epoch holds model, optimizer,
scheduler and the log. Results depend on the thread count (one by default).

    python -m lora_core.toy train-judge      # rerun after an interruption: resumes
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from lora_core.config import Config, option
from lora_core.io import atomic_path, atomic_write_text
from lora_core.metrics.heads import IMAGE_CNN, ImageClassifier, accuracy, save_head
from lora_core.metrics.train_heads import vae_reconstruct
from lora_core.toy.catalog import hash_order
from lora_core.toy.heads import heldout_keys, load_catalog, load_pairs, vendors_of
from lora_core.world import BASE_VENDOR, REPO_ROOT, STYLE_SETS, VENDORS

BOOK_STYLES = (BASE_VENDOR, "twemoji", "fluent3d", "openmoji")   # the base style and chapter 1's targets
JUDGE_NAME = "style judge CNN (32 px)"


@dataclass(frozen=True)
class JudgeConfig(Config):
    data_dir: str = option("data", "built toy world (relative paths start at the repository root)")
    out: str = option("models/metrics/style_classifier.safetensors", "the judge's file; its card beside it (.json)")
    work_dir: str = option("scratch/judge", "round-trip cache and checkpoints: a rerun resumes from here")
    previous: str = option("models/metrics/style_classifier_effnet_v1.safetensors",
                           "the classifier the judge replaces, measured on the same images for the card ('' = none)")
    earlier: str = option("models/metrics/style_classifier_judge_v1.safetensors",
                          "this judge trained on the round trips of the tiny base's earlier VAE (before its phase 3), "
                          "measured on the same images for the card ('' = none)")
    vae: str = option("toy:base", "base model whose VAE makes the round trips")
    classes: tuple = option(BOOK_STYLES, "vendors the judge names: the book's styles (with all 7 vendors its "
                                         "accuracy on these fell from 0.87 to 0.79 on the validation subjects)")
    resolution: int = option(32, "image side in pixels: the tiny profile's generation resolution")
    seed: int = option(0, "seed of initial weights, sampled round trips, order and augmentation")
    threads: int = option(1, "torch CPU threads (results depend on it); 1 on a shared 2-core machine")
    validation_fraction: float = option(0.1, "share of the subjects eligible for a style set but in none, kept "
                                             "out to choose settings (hash order)")
    sampled_round_trips: int = option(2, "round trips per training image from a latent sampled from the "
                                         "posterior, beside the one from its mean")
    width: int = option(32, "channels of the CNN's first stage (then 2x, 4x)")
    epochs: int = option(30, "passes over the training images")
    batch_size: int = option(128, "images per optimizer step")
    lr: float = option(3e-3, "AdamW peak learning rate")
    weight_decay: float = option(5e-4, "AdamW weight decay")
    warmup_epochs: float = option(1.0, "linear warmup, then cosine decay to 0")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing")
    ema_decay: float = option(0.99, "EMA of the weights, warmed up as (1+step)/(10+step): the EMA model is "
                                    "validated and shipped (0 = the trained weights themselves)")
    max_shift: int = option(2, "random translation in pixels (edges replicated)")

    def __post_init__(self):
        if not set(self.classes) <= set(VENDORS) or len(set(self.classes)) < 2:
            raise ValueError(f"classes must be >= 2 of the world's vendors ({', '.join(VENDORS)}), got {self.classes}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")

    def path(self, name: str) -> Path:
        """A path option resolved against the repository root."""
        value = Path(getattr(self, name))
        return value if value.is_absolute() else REPO_ROOT / value


# ---------------------------------------------------------------- data

def split_subjects(data_dir: Path, validation_fraction: float) -> dict[str, list[str]]:
    """``train``, ``validation`` and ``heldout`` subject keys (sorted, pairwise disjoint).

    Held out: the style sets' subjects. Validation: the first ``validation_fraction``, in hash
    order, of the other subjects that could have been in a style set (drawn by every vendor, not
    a flag), so that it resembles the held-out set; every other base subject trains.
    """
    from lora_core.toy.build import BuildConfig

    catalog = load_catalog(data_dir)
    heldout = sorted(k for k in heldout_keys(data_dir) if k in catalog.index)
    rest = [k for k in catalog.index if k not in set(heldout)]
    excluded = BuildConfig().excluded_style_categories
    like_heldout = [k for k in rest if catalog.at[k, "category"] not in excluded
                    and len(vendors_of(catalog, k)) == len(VENDORS)]
    chosen = hash_order(like_heldout, "style-judge/validation")[:round(validation_fraction * len(like_heldout))]
    return {"train": sorted(set(rest) - set(chosen)), "validation": sorted(chosen), "heldout": heldout}


def split_pairs(data_dir: Path, keys: list[str], classes: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every (subject, vendor) of ``keys`` that a vendor among ``classes`` draws."""
    catalog = load_catalog(data_dir)
    return [(key, vendor) for key in keys for vendor in vendors_of(catalog, key) if vendor in classes]


def content_hash(*parts) -> str:
    """sha256 over tensors (dtype, shape and bytes) and JSON-able values, in order.

    >>> content_hash(torch.zeros(2)) == content_hash(torch.zeros(2, dtype=torch.float64)), len(content_hash("a"))
    (False, 64)
    """
    digest = hashlib.sha256()
    for part in parts:
        if torch.is_tensor(part):
            part = part.detach().cpu().contiguous()
            digest.update(f"{part.dtype}{tuple(part.shape)}".encode())
            digest.update(part.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()


def vae_digest(vae: torch.nn.Module) -> str:
    """sha256 of the VAE's content (every parameter and buffer, by name): what its round trips
    depend on, so a retrained VAE reuses neither cached round trips nor a checkpoint."""
    return content_hash(*[part for name, tensor in sorted(vae.state_dict().items()) for part in (name, tensor)])


def cached_round_trips(vae, images: torch.Tensor, variants: int, seed: int, cache_dir: Path,
                       log=print, digest: str | None = None) -> torch.Tensor:
    """(variants + 1, N, 3, R, R) uint8: the mean round trip, then ``variants`` sampled ones, each
    cached in ``cache_dir`` by :func:`vae_digest` (``digest`` when given), the images, the seed
    and its index."""
    from safetensors.torch import load_file, save_file

    digest = digest or vae_digest(vae)
    trips = []
    for variant in range(variants + 1):   # variant 0: the mean
        key = content_hash(digest, images, seed, variant)[:32]
        path = cache_dir / f"round-trips-{key}.safetensors"
        if not path.is_file():
            log(f"  VAE round trips of {len(images)} images ({'mean' if not variant else f'sample {variant}'})")
            generator = torch.Generator().manual_seed(seed * 1000 + variant) if variant else None
            with atomic_path(path) as tmp:
                save_file({"images": vae_reconstruct(vae, generator=generator)(images).contiguous()}, str(tmp))
        trips.append(load_file(str(path))["images"])
    return torch.stack(trips)


def augment(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Float images in [-1, 1]: each uint8 image moved by ``shifts[i] - max_shift`` px (rows, columns;
    edges replicated) and mirrored where ``flips[i]``.

    >>> image = torch.arange(9, dtype=torch.uint8).reshape(1, 1, 3, 3).expand(1, 3, 3, 3)
    >>> moved = augment(image, torch.tensor([[1, 2]]), torch.tensor([False]), max_shift=1)
    >>> ((moved[0, 0] + 1) * 127.5).round().int().tolist()   # content moved one column to the left
    [[1, 2, 2], [4, 5, 5], [7, 8, 8]]
    """
    x = images.float() / 127.5 - 1
    if max_shift:
        padded = F.pad(x, (max_shift,) * 4, mode="replicate")
        size = x.shape[-1]
        x = torch.stack([padded[i, :, r:r + size, c:c + size] for i, (r, c) in enumerate(shifts.tolist())])
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


@dataclass
class JudgeData:
    """Round trips and labels of the three splits (train: every variant; the others: the mean's)."""

    split: dict[str, list[str]]
    pairs: dict[str, list[tuple[str, str]]]
    images: dict[str, torch.Tensor]     # train (variants + 1, N, 3, R, R); validation, heldout (N, 3, R, R)
    labels: dict[str, torch.Tensor]
    vae_sha256: str                     # :func:`vae_digest` of the VAE that made the round trips


def prepare_data(cfg: JudgeConfig, log=print) -> JudgeData:
    """Split, load and round-trip the images of every split (cached in ``work_dir``)."""
    from lora_core.models import load_base

    data_dir = cfg.path("data_dir")
    split = split_subjects(data_dir, cfg.validation_fraction)
    pairs = {name: split_pairs(data_dir, keys, cfg.classes) for name, keys in split.items()}
    log("judge images: " + ", ".join(f"{len(p)} {name} ({len(split[name])} subjects)" for name, p in pairs.items()))
    vae = load_base(cfg.vae).vae.eval()
    digest = vae_digest(vae)
    images, labels = {}, {}
    for name, split_pairs_ in pairs.items():
        real = load_pairs(data_dir, split_pairs_, cfg.resolution)
        variants = cfg.sampled_round_trips if name == "train" else 0
        trips = cached_round_trips(vae, real, variants, cfg.seed, cfg.path("work_dir"), log, digest)
        images[name] = trips if name == "train" else trips[0]
        labels[name] = torch.tensor([cfg.classes.index(vendor) for _, vendor in split_pairs_])
    return JudgeData(split, pairs, images, labels, digest)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total_steps``.

    >>> [round(lr_multiplier(s, 2, 6), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


@dataclass
class Training:
    """What a checkpoint holds besides the log: the model, its EMA copy, optimizer and scheduler."""

    model: ImageClassifier
    ema: ImageClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in ("model", "ema", "optimizer", "scheduler")}

    def load_state_dict(self, state: dict) -> None:
        for name in ("model", "ema", "optimizer", "scheduler"):
            getattr(self, name).load_state_dict(state[name])


def new_training(cfg: JudgeConfig, steps_per_epoch: int) -> Training:
    """A fresh model (initialised from ``cfg.seed``, global RNG untouched), its EMA, AdamW, schedule."""
    import copy

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = ImageClassifier(cfg.classes, cfg.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup, total = round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, warmup, total))
    return Training(model, copy.deepcopy(model).eval(), optimizer, scheduler)


def train_epoch(training: Training, data: JudgeData, cfg: JudgeConfig, epoch: int) -> float:
    """One pass over the training images in an order and with augmentations fixed by (seed, epoch);
    returns the mean loss. The last incomplete batch is left out (batch norm needs a batch)."""
    from lora_core.toy.pretrain import ema_update

    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch + 1)
    variants, n = data.images["train"].shape[:2]
    order = torch.randperm(n, generator=generator)
    variant = torch.randint(variants, (n,), generator=generator)
    shifts = torch.randint(2 * cfg.max_shift + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    model, ema = training.model.train(), training.ema.state_dict()
    losses = []
    for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):
        rows = order[start:start + cfg.batch_size]
        x = augment(data.images["train"][variant[rows], rows], shifts[rows], flips[rows], cfg.max_shift)
        loss = F.cross_entropy(model(x), data.labels["train"][rows], label_smoothing=cfg.label_smoothing)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        training.optimizer.step()
        ema_update(ema, model, cfg.ema_decay, training.scheduler.last_epoch)   # last_epoch counts steps here
        training.scheduler.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


NOT_TRAINING = ("out", "work_dir", "previous", "earlier")   # options that change what is written, not what is trained


def checkpoint_path(cfg: JudgeConfig, data: JudgeData) -> Path:
    """Where training on ``data`` with ``cfg`` checkpoints: named by the options training depends
    on and by the content of the VAE (``cfg.vae`` names a model, and the model behind a name can
    be retrained) and of the training images and labels, so a resume never continues training on
    other round trips."""
    training = {k: v for k, v in cfg.to_dict().items() if k not in NOT_TRAINING}
    key = content_hash(training, data.vae_sha256, data.images["train"], data.labels["train"])
    return cfg.path("work_dir") / f"judge-{key[:16]}.pt"


def train_judge(cfg: JudgeConfig = JudgeConfig(), log=print) -> dict:
    """Train (or resume) the judge, then write its EMA weights to ``cfg.out`` with its card
    (``.json``) and the card's table (``.md``, included by the book's data page); returns the card."""
    torch.set_num_threads(cfg.threads)
    start_time = time.time()
    data = prepare_data(cfg, log)
    training = new_training(cfg, data.images["train"].shape[1] // cfg.batch_size)
    checkpoint = checkpoint_path(cfg, data)
    history = []
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        training.load_state_dict(state)
        history = list(state["history"])
        log(f"[judge] resumed after epoch {len(history)} from {checkpoint}")
    for epoch in range(len(history), cfg.epochs):
        t0 = time.time()
        loss = train_epoch(training, data, cfg, epoch)
        validation = accuracy(training.ema.predict_proba(data.images["validation"]), data.labels["validation"])
        history.append({"epoch": epoch + 1, "loss": round(loss, 5), "validation_accuracy": round(validation, 4),
                        "seconds": round(time.time() - t0, 1)})
        with atomic_path(checkpoint) as tmp:
            torch.save({**training.state_dict(), "history": history, "config": cfg.to_json()}, tmp)
        log(f"[judge] epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} validation accuracy {validation:.3f} "
            f"({time.time() - t0:.0f} s)")
    card = judge_card(cfg, training.ema, data, history)
    card["train_minutes"] = round(sum(row["seconds"] for row in history) / 60, 1)
    save_head(training.ema, cfg.path("out"), card)
    atomic_write_text(cfg.path("out").with_suffix(".md"), card_markdown(card))
    log(f"[judge] wrote {cfg.path('out')} in {time.time() - start_time:.0f} s: held-out accuracy "
        f"{card['heldout_accuracy']:.3f}, on the book's styles {card['heldout_accuracy_book_styles']:.3f}")
    return card


# ---------------------------------------------------------------- the card

def classification_report(probs: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...],
                          true_classes: tuple[str, ...]) -> dict:
    """Accuracy over every image, over the images whose true class is in ``true_classes``, per
    class, and the confusion matrix (true -> predicted -> count).

    >>> report = classification_report(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]),
    ...                                torch.tensor([0, 1, 1]), ("a", "b"), ("b",))
    >>> report["accuracy"], report["accuracy_book_styles"], report["confusion"]["b"]
    (0.6666666666666666, 0.5, {'a': 1, 'b': 1})
    """
    predicted = probs.argmax(-1)
    chosen = torch.tensor([classes[i] in true_classes for i in labels.tolist()])
    confusion = pd.crosstab(pd.Series([classes[i] for i in labels.tolist()], name="true"),
                            pd.Series([classes[i] for i in predicted.tolist()], name="predicted"))
    return {"accuracy": accuracy(probs, labels), "accuracy_book_styles": accuracy(probs[chosen], labels[chosen]),
            "per_class": {c: accuracy(probs[labels == i], labels[labels == i])
                          for i, c in enumerate(classes) if bool((labels == i).any())},
            "confusion": {true: {k: int(v) for k, v in row.items()} for true, row in confusion.iterrows()}}


def p_class_on_style_sets(probs: torch.Tensor, pairs: list[tuple[str, str]], classes: tuple[str, ...],
                          data_dir: Path) -> dict[str, dict]:
    """Mean P(vendor) on the round trips of each style set's held-out subjects in that vendor, and
    of the base vendor on the same subjects: the ceiling of "P(target style)" in the book."""
    row = {pair: i for i, pair in enumerate(pairs)}
    # every style set has the same held-out subjects
    subjects = sorted(p.stem for p in (data_dir / "styles" / next(iter(STYLE_SETS)) / "heldout").glob("*.png"))
    judged = {vendor for _, vendor in pairs} & set(classes)
    vendors = [v for v in [BASE_VENDOR] + [s.vendor for s in STYLE_SETS.values()] if v in judged]
    return {vendor: {"n": len(subjects), "p": float(probs[[row[(k, vendor)] for k in subjects],
                                                         classes.index(vendor)].double().mean())}
            for vendor in vendors}


def sample_check_keys(heldout: list[str], n: int = 25) -> list[str]:
    """The held-out subjects whose book-style round trips the tests score again: the first ``n``."""
    return sorted(heldout)[:n]


def judge_card(cfg: JudgeConfig, model: ImageClassifier, data: JudgeData, history: list[dict]) -> dict:
    """Training data, split, accuracy on held-out subjects, confusion matrix, the ceiling P(style)
    per style set, and the earlier judge's and the previous classifier's numbers on the same images."""
    probs = model.predict_proba(data.images["heldout"])
    report = classification_report(probs, data.labels["heldout"], cfg.classes, BOOK_STYLES)
    sample = sample_check_keys(data.split["heldout"])
    rows = [i for i, (k, v) in enumerate(data.pairs["heldout"]) if k in set(sample) and v in BOOK_STYLES]
    return {
        "kind": "style judge (vendor classifier on VAE round trips)", "name": JUDGE_NAME, "backbone": JUDGE_NAME,
        "architecture": {"kind": IMAGE_CNN, "width": cfg.width,
                         "parameters": sum(p.numel() for p in model.parameters())},
        "classes": list(cfg.classes), "book_styles": [c for c in BOOK_STYLES if c in cfg.classes],
        "resolution": cfg.resolution, "seed": cfg.seed, "config": cfg.to_dict(), "config_hash": cfg.hash(),
        "vae_sha256": data.vae_sha256,
        "data": f"true emoji of every vendor in classes at {cfg.resolution} px, as VAE round trips through "
                f"{cfg.vae}'s VAE: the mean's and {cfg.sampled_round_trips} sampled per training image",
        "split": {"rule": "held out: every subject of data/styles/*, never trained on; validation: a "
                          f"{cfg.validation_fraction:.0%} hash-order sample (salt style-judge/validation) of the "
                          "other subjects drawn by every vendor and not flags, like the held-out ones; every "
                          "other base subject trains",
                  **{f"{name}_subjects": len(keys) for name, keys in data.split.items()},
                  **{f"{name}_images": len(pairs) for name, pairs in data.pairs.items()},
                  "heldout_keys": data.split["heldout"], "validation_keys": data.split["validation"],
                  "train_keys_sha256": content_hash(data.split["train"])},
        "heldout_accuracy": report["accuracy"], "heldout_accuracy_book_styles": report["accuracy_book_styles"],
        "heldout_per_class": report["per_class"], "heldout_confusion": report["confusion"],
        "validation_accuracy": history[-1]["validation_accuracy"],
        "train_accuracy": accuracy(model.predict_proba(data.images["train"][0]), data.labels["train"]),
        "p_style_on_round_trips": p_class_on_style_sets(probs, data.pairs["heldout"], cfg.classes,
                                                        cfg.path("data_dir")),
        "sample_check": {"subjects": sample, "styles": [c for c in BOOK_STYLES if c in cfg.classes],
                         "images": len(rows), "accuracy": accuracy(probs[rows], data.labels["heldout"][rows])},
        "history": history,
        "earlier": compared_classifier_report(cfg, data, "earlier"),
        "previous": compared_classifier_report(cfg, data, "previous"),
    }


def compared_classifier_report(cfg: JudgeConfig, data: JudgeData, name: str) -> dict | None:
    """Another style classifier (the file of option ``name``) on the judge's held-out round trips,
    its own card's numbers beside; None when the option is '' or the file is missing.

    Its accuracies are over the judge's classes only (the argmax among them), so both name the
    same styles; its P(style) is its own, over every class it knows, as the book read it."""
    from lora_core.metrics.cache import FeatureCache
    from lora_core.metrics.style import StyleClassifier

    if not getattr(cfg, name) or not cfg.path(name).is_file():
        return None
    other = StyleClassifier(cfg.path(name), cache=FeatureCache(cfg.path("data_dir") / "cache" / "features"))
    missing = [c for c in cfg.classes if c not in other.classes]
    if missing:
        raise ValueError(f"{name}: {getattr(cfg, name)} does not name {missing}; it cannot be compared")
    probs = other.predict_proba(data.images["heldout"])
    same_classes = probs[:, [other.classes.index(c) for c in cfg.classes]]
    report = classification_report(same_classes, data.labels["heldout"], cfg.classes, BOOK_STYLES)
    own = ("heldout_accuracy", "heldout_accuracy_book_styles", "heldout_per_vendor", "heldout_per_class", "split",
           "vae_sha256")
    return {"file": getattr(cfg, name), "backbone": other.backbone_name, "classes": list(other.classes),
            "its_card": {k: other.card[k] for k in own if k in other.card},
            "heldout_accuracy": report["accuracy"], "heldout_accuracy_book_styles": report["accuracy_book_styles"],
            "heldout_per_class": report["per_class"], "heldout_confusion": report["confusion"],
            "p_style_on_round_trips": p_class_on_style_sets(probs, data.pairs["heldout"], other.classes,
                                                            cfg.path("data_dir"))}


COLUMNS = (("judge", None), ("judge on the earlier VAE", "earlier"), ("previous classifier", "previous"))


def _value_row(label: str, columns: list[dict], *path: str) -> str:
    """A table row: the number at ``path`` (keys into nested dicts) of each column's card, '–' where absent."""
    values = []
    for value in columns:
        for key in path:
            value = (value or {}).get(key)
        values.append(value)
    return f"| {label} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in values) + " |"


def card_markdown(card: dict) -> str:
    """The card's numbers as the table the book's data page includes (``<judge>.md``): the judge,
    and beside it on the same images the classifiers of :data:`COLUMNS` that the card holds."""
    shown = [(title, card if key is None else card[key]) for title, key in COLUMNS if key is None or card.get(key)]
    columns = [column for _, column in shown]
    rows = [_value_row(f"accuracy, the book's styles ({', '.join(card['book_styles'])})", columns,
                       "heldout_accuracy_book_styles")]
    if set(card["classes"]) != set(card["book_styles"]):   # otherwise the same number twice
        rows.append(_value_row(f"accuracy, all {len(card['classes'])} vendors the judge names", columns,
                               "heldout_accuracy"))
    rows += [_value_row(f"accuracy on {c} images", columns, "heldout_per_class", c) for c in card["classes"]]
    ceilings = card["p_style_on_round_trips"]   # in the classes' order: a stored card's keys come back sorted
    rows += [_value_row(f"P({c}) on {c} round trips of the style sets' {ceilings[c]['n']} held-out subjects",
                        columns, "p_style_on_round_trips", c, "p") for c in card["classes"] if c in ceilings]
    return (_card_sentences(card) + "\n\n| held-out subjects, VAE round trips | " + " | ".join(t for t, _ in shown)
            + " |\n|---|" + "---|" * len(shown) + "\n" + "\n".join(rows) + "\n")


def _card_sentences(card: dict) -> str:
    split, earlier, previous = card["split"], card.get("earlier"), card.get("previous")
    text = (f"The style judge names which of {len(card['classes'])} vendors drew a {card['resolution']} px image: "
            f"a CNN of {card['architecture']['parameters']:,} parameters trained for {len(card['history'])} epochs "
            f"({card['train_minutes']} min on one thread) on VAE round trips of {split['train_images']:,} true "
            f"images of {split['train_subjects']:,} subjects. Held out: the {split['heldout_subjects']} subjects of "
            f"the style sets in every vendor, {split['heldout_images']:,} round trips through the VAE of "
            f"`{card['config']['vae']}`. Beside it, on the same images, ")
    compared = []
    if earlier:
        compared.append(f"the same judge trained on the round trips of the tiny base's earlier VAE (before its "
                        f"phase 3; it scored {earlier['its_card']['heldout_accuracy_book_styles']:.2f} on the "
                        "round trips of that VAE)")
    if previous:
        compared.append(f"the previous classifier ({previous['backbone']} features and a linear head, "
                        f"{len(previous['classes'])} vendors)")
    if not compared:
        return text.replace(" Beside it, on the same images, ", "")
    return text + " and ".join(compared) + "; their accuracies count their choice among the judge's classes."
