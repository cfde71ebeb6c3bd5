"""Build the toy world from the npm emoji packages: images, captions, style sets, manifest.

``build()`` is deterministic (fixed subject selection by hash order, fixed background, Lanczos
resize, PNG bytes) and idempotent: when ``data/emoji/MANIFEST.json`` records the same build
fingerprint and every listed file exists, it returns at once. A build writes into a temporary
folder and swaps it in, the manifest last, so an interrupted build is never mistaken for a
finished one.

Layout (see /tmp/contracts.md)::

    data/emoji/catalog.csv, data/emoji/images/<vendor>/<key>.png, data/emoji/MANIFEST.json
    data/base/<key>.png + .txt                       Noto, every subject incl. skin tones
    data/styles/<style>/{train,heldout}/<key>.png + .txt   caption + trigger word
    data/sets/<name>/{train,heldout}/<key>.png + .txt (+ .tags)   part II subject sets (toy/sets.py)
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lora_core.config import Config, option
from lora_core import world
from lora_core.io import atomic_write_json
from lora_core.paths import REPO_ROOT
from lora_core.toy.catalog import Subject, hash_order, load_subjects
from lora_core.toy.sets import subject_set_splits, subject_sets_manifest, write_subject_sets
from lora_core.toy.sources import CATALOG_PACKAGE, VendorFiles, package_version
from lora_core.world import BASE_VENDOR, DATA_DIR, STYLE_CAPTION_TEMPLATE, STYLE_SETS, SUBJECT_SETS, VENDORS

NODE_MODULES = REPO_ROOT / "node_modules"
PARTS = ("emoji", "base", "styles", "sets")  # the folders of data/ a build writes


@dataclass(frozen=True)
class BuildConfig(Config):
    image_size: int = option(64, "stored image side in pixels (training resizes further)")
    background: tuple = option((255, 255, 255), "RGB colour that transparency is composited onto")
    style_train_subjects: int = option(100, "subjects in each style's training set")
    style_heldout_subjects: int = option(200, "disjoint subjects in each style's held-out set")
    excluded_style_categories: tuple = option(
        ("Flags", "Component"), "categories left out of style sets (flags follow national "
                                "specifications, components are swatches): little room for style")
    selection_salt: str = option("lora-style-lab/v1", "salt of the hash order that selects subjects")
    subject_set_train: tuple = option(
        (("face_character", 28), ("person_character", 20), ("landmarks", 115), ("large_captioned", 1500)),
        "(name, training subjects) of each part II subject set to build; its other members are held out")
    limit: int = option(0, "keep only this many base subjects (hash order) and their variants; 0 = all")

    def __post_init__(self):
        if self.style_train_subjects < 1 or self.style_heldout_subjects < 1:
            raise ValueError("style_train_subjects and style_heldout_subjects must be >= 1")
        names = [name for name, _ in self.subject_set_train]
        for name, n_train in self.subject_set_train:
            if name not in SUBJECT_SETS or names.count(name) > 1 or n_train < 1:
                raise ValueError(f"subject_set_train: ({name!r}, {n_train}) needs a set name listed once "
                                 f"(valid: {', '.join(SUBJECT_SETS)}) and at least 1 training subject")


def fingerprint(cfg: BuildConfig, node_modules: Path) -> str:
    """Hash of everything the output depends on: config, package versions, the code that writes it."""
    code = b"".join(path.read_bytes() for path in _code_files())
    versions = {p: package_version(node_modules, p) for p in _packages()}
    blob = json.dumps([cfg.to_dict(), versions, hashlib.sha256(code).hexdigest()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _code_files() -> list[Path]:
    """The modules whose code decides the built bytes: the builder and the world's vocabulary."""
    here = Path(__file__).parent
    return [here / "build.py", here / "catalog.py", here / "sources.py", here / "sets.py", Path(world.__file__)]


def _packages() -> list[str]:
    return sorted({CATALOG_PACKAGE, *(v.package for v in VENDORS.values()), "@iconify-json/fluent-emoji-flat"})


def is_built(data_dir: Path, expected_fingerprint: str) -> bool:
    manifest = data_dir / "emoji" / "MANIFEST.json"
    if not manifest.exists():
        return False
    recorded = json.loads(manifest.read_text())
    return (recorded.get("fingerprint") == expected_fingerprint
            and all((data_dir / rel).exists() for rel in recorded["files"]))


def build(cfg: BuildConfig = BuildConfig(), data_dir: Path = DATA_DIR, node_modules: Path = NODE_MODULES,
          force: bool = False, log=print) -> dict:
    """Build (or keep) the toy world in ``data_dir``; returns the manifest."""
    data_dir, node_modules = Path(data_dir), Path(node_modules)
    expected = fingerprint(cfg, node_modules)
    if not force and is_built(data_dir, expected):
        log(f"toy world up to date in {data_dir} (fingerprint {expected[:12]})")
        return json.loads((data_dir / "emoji" / "MANIFEST.json").read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toy-build.", dir=data_dir))
    try:
        subjects = _select_subjects(load_subjects(node_modules), cfg)
        available = _write_vendor_images(tmp, subjects, cfg, node_modules, log)
        _write_catalog(tmp / "emoji" / "catalog.csv", subjects, available)
        _write_base_set(tmp, subjects, available)
        splits = _write_style_sets(tmp, subjects, available, cfg)
        set_splits = subject_set_splits(subjects, available, dict(cfg.subject_set_train), cfg.selection_salt)
        write_subject_sets(tmp, subjects, set_splits)
        manifest = _manifest(tmp, cfg, expected, node_modules, splits, set_splits)
        for part in PARTS:
            if (data_dir / part).exists():
                shutil.rmtree(data_dir / part)
            os.replace(tmp / part, data_dir / part)
        atomic_write_json(data_dir / "emoji" / "MANIFEST.json", manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"built toy world in {data_dir}: {manifest['counts']}")
    return manifest


def _select_subjects(subjects: list[Subject], cfg: BuildConfig) -> list[Subject]:
    if not cfg.limit:
        return subjects
    keep = set(hash_order([s.key for s in subjects if s.is_base], cfg.selection_salt)[:cfg.limit])
    return [s for s in subjects if s.base_key in keep]


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _write_vendor_images(root: Path, subjects: list[Subject], cfg: BuildConfig, node_modules: Path,
                         log) -> dict[str, set[str]]:
    """Draw every subject for every vendor (skin tones for the base vendor only), 2 processes."""
    jobs = {vendor: [s.key for s in subjects if s.is_base or vendor == BASE_VENDOR] for vendor in VENDORS}
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        futures = {vendor: pool.submit(_draw_vendor, vendor, keys, root, cfg, node_modules)
                   for vendor, keys in jobs.items()}
        available = {vendor: set(future.result()) for vendor, future in futures.items()}
    for vendor, keys in available.items():
        log(f"  {vendor}: {len(keys)} images")
    return available


def _draw_vendor(vendor: str, keys: list[str], root: Path, cfg: BuildConfig, node_modules: Path) -> list[str]:
    files = VendorFiles(vendor, node_modules)
    drawn = [key for key in keys if key in files.sources]
    folder = root / "emoji" / "images" / vendor
    folder.mkdir(parents=True)
    for key in drawn:
        (folder / f"{key}.png").write_bytes(_png_bytes(files.render(key, cfg.image_size, tuple(cfg.background))))
    return drawn


def _write_catalog(path: Path, subjects: list[Subject], available: dict[str, set[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["key", "unified", "name", "category", "subcategory", "skin_tone", "caption", *VENDORS])
        for s in subjects:
            writer.writerow([s.key, s.unified, s.name, s.category, s.subcategory, s.skin_tone, s.caption,
                             *(int(s.key in available[v]) for v in VENDORS)])


def _write_pair(folder: Path, key: str, png: bytes, caption: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}.png").write_bytes(png)
    (folder / f"{key}.txt").write_text(caption + "\n", encoding="utf-8")


def _write_base_set(root: Path, subjects: list[Subject], available: dict[str, set[str]]) -> None:
    images = root / "emoji" / "images" / BASE_VENDOR
    for s in subjects:
        if s.key in available[BASE_VENDOR]:
            _write_pair(root / "base", s.key, (images / f"{s.key}.png").read_bytes(), s.caption)


def style_eligible(subjects: list[Subject], available: dict[str, set[str]], cfg: BuildConfig) -> list[str]:
    """Base subjects drawn by every vendor and not in an excluded category."""
    return [s.key for s in subjects if s.is_base and s.category not in cfg.excluded_style_categories
            and all(s.key in keys for keys in available.values())]


def _write_style_sets(root: Path, subjects: list[Subject], available: dict[str, set[str]],
                      cfg: BuildConfig) -> dict[str, list[str]]:
    """The same train/held-out subjects for every style, so styles compare pairwise."""
    ordered = hash_order(style_eligible(subjects, available, cfg), cfg.selection_salt + "/styles")
    n_train, n_heldout = cfg.style_train_subjects, cfg.style_heldout_subjects
    if len(ordered) < n_train + n_heldout:
        raise ValueError(f"only {len(ordered)} subjects are drawn by every vendor; "
                         f"{n_train} train + {n_heldout} held-out requested")
    splits = {"train": sorted(ordered[:n_train]), "heldout": sorted(ordered[n_train:n_train + n_heldout])}
    captions = {s.key: s.caption for s in subjects}
    for style, spec in STYLE_SETS.items():
        images = root / "emoji" / "images" / spec.vendor
        for split, keys in splits.items():
            for key in keys:
                caption = STYLE_CAPTION_TEMPLATE.format(caption=captions[key], trigger=spec.trigger)
                _write_pair(root / "styles" / style / split, key, (images / f"{key}.png").read_bytes(), caption)
    return splits


def _manifest(root: Path, cfg: BuildConfig, expected: str, node_modules: Path,
              splits: dict[str, list[str]], set_splits: dict[str, dict[str, list[str]]]) -> dict:
    files = {}
    for part in PARTS:
        for path in sorted((root / part).rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    sources = {name: {"package": v.package, "version": package_version(node_modules, v.package),
                      "style": v.style, "license": v.license, "attribution": v.attribution,
                      "url": v.url, "share_alike": v.share_alike} for name, v in VENDORS.items()}
    sources["catalog"] = {"package": CATALOG_PACKAGE, "version": package_version(node_modules, CATALOG_PACKAGE),
                          "license": "MIT", "attribution": "emoji-data by Cal Henderson (iamcal), MIT License",
                          "url": "https://github.com/iamcal/emoji-data", "share_alike": False}
    counts = {"subjects": sum(1 for _ in (root / "base").glob("*.png"))}
    counts.update({f"images/{v}": sum(1 for _ in (root / "emoji" / "images" / v).glob("*.png")) for v in VENDORS})
    counts.update({f"styles/{split}": len(keys) for split, keys in splits.items()})
    counts.update({f"sets/{name}/{split}": len(keys) for name, s in set_splits.items() for split, keys in s.items()})
    return {"fingerprint": expected, "config": cfg.to_dict(), "sources": sources, "counts": counts,
            "style_sets": {k: {"vendor": s.vendor, "trigger": s.trigger, "distance": s.distance,
                               "caption_template": STYLE_CAPTION_TEMPLATE} for k, s in STYLE_SETS.items()},
            "splits": splits, "subject_sets": subject_sets_manifest(set_splits, sources), "files": files}


def verify(data_dir: Path = DATA_DIR) -> list[str]:
    """Files whose sha256 differs from the manifest (or that are missing); empty when all match."""
    recorded = json.loads((Path(data_dir) / "emoji" / "MANIFEST.json").read_text())
    bad = []
    for rel, digest in recorded["files"].items():
        path = Path(data_dir) / rel
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(rel)
    return bad
