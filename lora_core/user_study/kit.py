"""Build the study kit: a folder that holds the page, its images and the key to unblind the answers.

Input layout (``build_kit(folder, out)``, ``python -m lora_core.user_study build --from folder``)::

    folder/original/<subject>.png   the reference image of each subject
    folder/lora/<subject>.png       the LoRA generation for that subject
    folder/ti/<subject>.png         the textual-inversion generation for that subject

with the same subjects (file stems) in all three (S4: 5 subjects, 15 images). Output::

    out/index.html      the page (open it as a file or serve it; it makes no network request)
    out/images/<id>.png the images under opaque ids that do not reveal the method
    out/manifest.json   the key: which id is which method and subject, the attention checks
    out/README.txt      what the files are

Besides one trial per subject the kit adds ``n_attention`` check trials: an original beside an
exact copy of itself and a plain grey square, where "closest in style" and "recognisable" have an
obvious answer (the copy). The output depends only on the input files' bytes and ``n_attention``.

>>> images = [SourceImage(role, subject, None, f"{role}-{subject}", 32, 32)
...           for role in ROLES for subject in ("cat", "owl")]
>>> manifest = plan_kit(images, n_attention=1)
>>> len(manifest["page"]["trials"]), len(manifest["page"]["images"]), manifest["kit_id"]
(3, 9, 'cb017f08eadb')
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from lora_core.io import atomic_write_json
from lora_core.user_study.design import PAGE_VERSION, QUESTIONS, ROLES
from lora_core.user_study.page import render_page

LAYOUT = "<folder>/{original,lora,ti}/<subject>.png, the same subjects in each"
BLANK_GREY = (128, 128, 128)
KIT_README = """This folder is a blind user-study kit built by `python -m lora_core.user_study build`.

index.html    the study page: open it in a browser (as a local file or from any web server);
              it makes no network request and saves the answers as a file the participant downloads
images/       the images, under ids that do not say which method made them
manifest.json the key (which image is which method and subject, the attention checks) that
              `python -m lora_core.user_study analyse` needs: for a live study, publish
              index.html and images/ only, and keep manifest.json to yourself
"""


@dataclass(frozen=True)
class SourceImage:
    """One input image: its role (original, lora, ti), subject, file, content hash and size."""

    role: str
    subject: str
    path: Path | None  # None for images that exist only in a plan (simulations, doctests)
    sha256: str
    width: int
    height: int


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def folder_problems(folder: Path) -> list[str]:
    """Everything wrong with ``folder`` as a kit's input (empty when the layout is right)."""
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems, subjects = [], {}
    for role in ROLES:
        role_dir = folder / role
        if not role_dir.is_dir():
            problems.append(f"missing subfolder {role}/")
            continue
        files = [p for p in sorted(role_dir.iterdir()) if not p.name.startswith(".")]
        problems += [f"{role}/{p.name} is not a .png file" for p in files if p.suffix != ".png" or not p.is_file()]
        subjects[role] = {p.stem for p in files if p.suffix == ".png" and p.is_file()}
    if "original" in subjects and not subjects["original"]:
        problems.append("original/ holds no .png image")
    for role in ROLES[1:]:
        if "original" in subjects and role in subjects:
            missing = sorted(subjects["original"] - subjects[role])
            extra = sorted(subjects[role] - subjects["original"])
            problems += [f"{role}/ lacks {s}.png" for s in missing] + [f"{role}/{s}.png has no original" for s in extra]
    return problems


def read_image_folder(folder: str | Path) -> list[SourceImage]:
    """The images of ``folder`` (layout in the module docstring); one ``ValueError`` lists every
    problem of a folder that does not follow it."""
    folder = Path(folder)
    problems = folder_problems(folder)
    images = []
    if not problems:
        for role in ROLES:
            for path in sorted((folder / role).glob("*.png")):
                try:
                    with Image.open(path) as image:
                        image.verify()
                        width, height = image.size
                except Exception as error:  # PIL raises several types for a broken file
                    problems.append(f"{role}/{path.name} is not a readable PNG ({error})")
                    continue
                images.append(SourceImage(role, path.stem, path, hashlib.sha256(path.read_bytes()).hexdigest(),
                                          width, height))
    if problems:
        raise ValueError(f"{folder}: not a user-study image folder ({LAYOUT}): " + "; ".join(problems))
    return images


def _kit_id(images: Sequence[SourceImage], n_attention: int) -> str:
    content = sorted((image.role, image.subject, image.sha256) for image in images)
    return _digest(json.dumps([PAGE_VERSION, n_attention, content]), 12)


def _attention_trials(kit_id: str, originals: list[SourceImage], n_attention: int) -> list[dict[str, Any]]:
    """Check trials: an original beside an exact copy of itself and a grey square of its size."""
    trials = []
    for k in range(n_attention):
        original = originals[k % len(originals)]
        names = {part: "i" + _digest(f"{kit_id}:attention-{k}:{part}", 10) for part in ("original", "copy", "blank")}
        trials.append({"id": "t" + _digest(f"{kit_id}:trial:attention-{k}", 8), "subject": original.subject,
                       "kind": "attention", "source": original, "images": names})
    return trials


def _one_per_role_and_subject(images: Sequence[SourceImage]) -> dict[tuple[str, str], SourceImage]:
    by_role = {(image.role, image.subject): image for image in images}
    subjects = {image.subject for image in images}
    missing = sorted(f"{role}/{subject}" for role in ROLES for subject in subjects if (role, subject) not in by_role)
    unknown = sorted({image.role for image in images} - set(ROLES))
    if missing or unknown or len(by_role) != len(images):
        raise ValueError(f"plan_kit: need exactly one image per role {ROLES} and subject; missing {missing}, "
                         f"unknown roles {unknown}, {len(images) - len(by_role)} duplicated")
    return by_role


def plan_kit(images: Sequence[SourceImage], n_attention: int = 2) -> dict[str, Any]:
    """The kit's manifest for ``images`` (see :func:`read_image_folder`): the blind ``page`` part
    embedded in the HTML, and the ``key`` that unblinds the answers."""
    if n_attention < 0:
        raise ValueError(f"n_attention must be >= 0, got {n_attention}")
    by_role = _one_per_role_and_subject(images)
    kit_id = _kit_id(images, n_attention)
    originals = sorted((image for image in images if image.role == "original"), key=lambda image: image.subject)
    page_images, key_images, trials, key_trials, attention = {}, {}, [], {}, {}

    def add(image_id: str, role: str, source: SourceImage, copied: bool) -> str:
        page_images[image_id] = {"src": f"images/{image_id}.png", "width": source.width, "height": source.height}
        key_images[image_id] = {"role": role, "subject": source.subject,
                                "source": f"{source.role}/{source.subject}.png" if copied else None}
        return image_id

    for original in originals:
        ids = {role: add("i" + _digest(f"{kit_id}:{role}:{original.subject}", 10), role,
                         by_role[(role, original.subject)], True) for role in ROLES}
        trial_id = "t" + _digest(f"{kit_id}:trial:{original.subject}", 8)
        trials.append({"id": trial_id, "original": ids["original"], "candidates": sorted([ids["lora"], ids["ti"]])})
        key_trials[trial_id] = {"kind": "study", "subject": original.subject}
    for check in _attention_trials(kit_id, originals, n_attention):
        names, source = check["images"], check["source"]
        add(names["original"], "original", source, True)
        copy_id = add(names["copy"], "attention copy", source, True)
        add(names["blank"], "attention blank", source, False)
        trials.append({"id": check["id"], "original": names["original"],
                       "candidates": sorted([copy_id, names["blank"]])})
        key_trials[check["id"]] = {"kind": "attention", "subject": source.subject}
        attention[check["id"]] = {"style": copy_id, "recognisable": [copy_id]}
    trials.sort(key=lambda trial: trial["id"])
    page = {"page_version": PAGE_VERSION, "kit_id": kit_id, "trials": trials, "images": page_images}
    key = {"images": key_images, "trials": key_trials, "attention": attention}
    questions = [{"id": q.id, "text": q.text, "options": [list(o) for o in q.options], "outcome": q.outcome,
                  "chance": q.chance} for q in QUESTIONS]
    return {"page_version": PAGE_VERSION, "kit_id": kit_id, "layout": LAYOUT, "page": page, "key": key,
            "questions": questions}


def _image_bytes(entry: dict[str, Any], size: dict[str, int], folder: Path) -> bytes:
    if entry["source"] is not None:
        return (folder / entry["source"]).read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (size["width"], size["height"]), BLANK_GREY).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_out(out: Path) -> None:
    """``out`` may be absent, empty or an older kit: never overwrite anything else."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise ValueError(f"{out} exists and is not a user-study kit (no manifest.json): choose another --out")


def _replace_folder(new: Path, out: Path) -> None:
    """Move the finished kit ``new`` onto ``out`` (checked by :func:`_check_out`)."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
        new.rename(out)
        shutil.rmtree(old)
    else:
        new.rename(out)


def build_kit(folder: str | Path, out: str | Path, n_attention: int = 2) -> Path:
    """Build the kit for the images in ``folder`` into ``out`` (replacing an older kit there).

    The kit is written beside ``out`` first and moved into place only when complete.
    """
    folder, out = Path(folder), Path(out)
    _check_out(out)
    manifest = plan_kit(read_image_folder(folder), n_attention)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the kit is meant to be published
    try:
        (staging / "images").mkdir()
        for image_id, entry in manifest["key"]["images"].items():
            size = manifest["page"]["images"][image_id]
            (staging / "images" / f"{image_id}.png").write_bytes(_image_bytes(entry, size, folder))
        (staging / "index.html").write_text(render_page(manifest["page"]), encoding="utf-8")
        (staging / "README.txt").write_text(KIT_README, encoding="utf-8")
        atomic_write_json(staging / "manifest.json", manifest)
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_manifest(kit: str | Path) -> dict[str, Any]:
    """The manifest of a kit folder (or a ``manifest.json`` path), checked for this page version."""
    path = Path(kit)
    path = path / "manifest.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{path}: no kit manifest here (build one with python -m lora_core.user_study build)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("page_version") != PAGE_VERSION:
        raise ValueError(f"{path}: page version {manifest.get('page_version')!r}, this code reads {PAGE_VERSION!r}")
    return manifest
