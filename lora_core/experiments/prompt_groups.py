"""Chapter 8's prompts: a captioned subject set, two prompt groups, and how far the alignment
stand-in can be trusted on each group, measured on real images.

Study S5 scored 50 prompts in two groups, "normal" and "abstract". Here:

* **concrete** prompts are held-out captions of the set, subjects named as the captions name
  them (the LoRA never trained on them; a true image exists for each);
* **abstract** prompts are ideas that no caption of the vendor names (:data:`ABSTRACT_IDEAS`:
  feelings, qualities, seasons), each listed with the emoji that depict it, so that the stand-in's
  reading of such a prompt can be checked on the vendor's own drawings of those emoji.

A stand-in trained here on captions may well not connect "grief" with a broken heart. So before
any alignment number of an abstract prompt is read, :func:`trust_check` asks the stand-in to
pick, for every real image that depicts an idea, the idea among all the group's prompts (top-1,
against chance 1 / number of prompts), and the same for the concrete prompts' true images. The
images count separately by whether the stand-in trained on their subject (its held-out subjects,
``toy.heads.heldout_keys``, are the honest test).

>>> ABSTRACT_IDEAS[0].word, ABSTRACT_IDEAS[0].depicted_by[0]
('happiness', ('1f600', 'grinning face'))
>>> caption_words("grinning face, face smiling, smileys and emotion, grinning") >= {"grinning", "smileys"}
True
>>> named_ideas([Idea("sadness", ()), Idea("sleepiness", ())], ["crying face", "sleepy face"])
{'sleepiness': ['sleepy']}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from lora_core.experiments.common import GENERATION_SEED_START, SPLITS, EvalSet, _selection
from lora_core.experiments.rank_costs import NOT_MEASURED, model_label, paired_gap, s5_setting
from lora_core.metrics.proportions import wilson_interval
from lora_core.metrics.stats import MetricResult

CONCRETE, ABSTRACT = "concrete", "abstract"
TRAINING = "training captions"   # the third prompt set of chapter 8: training captions, for the copy measures
ALIGNMENT_COLUMNS = ("model", "group", "measure", "metric", "value", "ci_low", "ci_high", "std", "n_prompts",
                     "n_seeds")
TRUST_COLUMNS = ("group", "real images", "n", "top-1 hits", "top-1 accuracy", "ci_low", "ci_high", "chance", "verdict",
                 "own-prompt AlignScore")
STEM_LETTERS = 5   # a caption word sharing an idea's first five letters names it ("sleepy" names "sleepiness")


@dataclass(frozen=True)
class Idea:
    """An abstract prompt and the emoji (catalogue key, emoji name) whose pictures show it."""

    word: str
    depicted_by: tuple[tuple[str, str], ...]


ABSTRACT_IDEAS: tuple[Idea, ...] = tuple(Idea(word, tuple(emoji)) for word, emoji in (
    ("happiness", [("1f600", "grinning face"), ("1f60a", "smiling face with smiling eyes"),
                   ("1f601", "grinning face with smiling eyes"), ("1f929", "grinning face with star eyes")]),
    ("sadness", [("1f622", "crying face"), ("1f614", "pensive face"), ("1f61e", "disappointed face")]),
    ("fury", [("1f620", "angry face"), ("1f621", "pouting face")]),
    ("fright", [("1f628", "fearful face"), ("1f631", "face screaming in fear")]),
    ("grief", [("1f62d", "loudly crying face"), ("1f494", "broken heart")]),
    ("wealth", [("1f4b0", "money bag"), ("1f48e", "gem stone"), ("1fa99", "coin"),
                ("1f4b6", "banknote with euro sign"), ("1f4b8", "money with wings")]),
    ("luck", [("1f340", "four leaf clover"), ("1f3b0", "slot machine"), ("1f3b2", "game die")]),
    ("danger", [("2620", "skull and crossbones"), ("26a0", "warning sign"), ("2622", "radioactive"),
                ("2623", "biohazard")]),
    ("darkness", [("1f311", "new moon symbol"), ("1f303", "night with stars"), ("1f30c", "milky way")]),
    ("winter", [("2603", "snowman"), ("2744", "snowflake"), ("1f328", "cloud with snow"),
                ("1f3bf", "ski and ski boot")]),
    ("summer", [("1f3d6", "beach with umbrella"), ("1f31e", "sun with face"),
                ("1f60e", "smiling face with sunglasses")]),
    ("tranquillity", [("1f54a", "dove"), ("1f9d8", "person in lotus position"), ("262e", "peace symbol"),
                      ("1f60c", "relieved face")]),
    ("journey", [("1f9f3", "luggage"), ("1f6eb", "airplane departure"), ("1f5fa", "world map"),
                 ("1f9ed", "compass")]),
    ("knowledge", [("1f4da", "books"), ("1f393", "graduation cap"), ("1f4d6", "open book"), ("1f4dc", "scroll")]),
    ("illness", [("1f912", "face with thermometer"), ("1f922", "nauseated face"), ("1f927", "sneezing face")]),
    ("festivity", [("1f389", "party popper"), ("1f38a", "confetti ball"), ("1f388", "balloon"),
                   ("1f386", "fireworks")]),
    ("melody", [("1f3b5", "musical note"), ("1f3b6", "multiple musical notes"), ("1f3bc", "musical score")]),
    ("hunger", [("1f37d", "fork and knife with plate"), ("1f924", "drooling face")]),
    ("exhaustion", [("1f62b", "tired face"), ("1f629", "weary face"), ("1f971", "yawning face"),
                    ("1f634", "sleeping face")]),
    ("friendship", [("1f91d", "handshake"), ("1f9d1-200d-1f91d-200d-1f9d1", "people holding hands")]),
    ("achievement", [("1f3c6", "trophy"), ("1f947", "first place medal"), ("1f3c5", "sports medal")]),
    ("velocity", [("1f3ce", "racing car"), ("1f680", "rocket"), ("1f684", "high-speed train"),
                  ("1f4a8", "dash symbol")]),
    ("emergency", [("1f691", "ambulance"), ("1f692", "fire engine"), ("1f6a8", "police cars revolving light")]),
    ("creativity", [("1f3a8", "artist palette"), ("1f58c", "paintbrush")]),
    ("sorcery", [("1f52e", "crystal ball"), ("1fa84", "magic wand"), ("1f9d9", "mage")]),
))


def caption_words(text: str) -> set[str]:
    """The lower-case words (letters only) of a caption."""
    return set(re.findall(r"[a-z]+", text.lower()))


def named_ideas(ideas: Sequence[Idea], captions: Sequence[str]) -> dict[str, list[str]]:
    """For each idea that some caption names after all, the caption words that name it: the word
    itself, a word sharing its first :data:`STEM_LETTERS` letters, or a word of that length or more
    that the idea starts with. Empty when every idea is abstract for these captions."""
    vocabulary = set().union(*(caption_words(c) for c in captions)) if captions else set()
    named = {}
    for idea in ideas:
        stem = idea.word[:STEM_LETTERS]
        hits = sorted(w for w in vocabulary if w.startswith(stem) or
                      (len(w) >= STEM_LETTERS and idea.word.startswith(w)))
        if hits:
            named[idea.word] = hits
    return named


def idea_table(ideas: Sequence[Idea] = ABSTRACT_IDEAS) -> pd.DataFrame:
    """One row per abstract prompt: the idea and the emoji that depict it (names)."""
    return pd.DataFrame([{"idea": idea.word, "depicted by": "; ".join(name for _, name in idea.depicted_by)}
                         for idea in ideas])


# ---- the captioned subject set (lora_core.world.SUBJECT_SETS, built by lora_core.toy) ---------

def subject_set(name: str) -> Any:
    """``lora_core.world.SUBJECT_SETS[name]`` (fields ``vendor``, ``trigger``, ``folder(split)``)."""
    from lora_core import world

    sets = getattr(world, "SUBJECT_SETS", {})
    if name not in sets:
        raise ValueError(f"subject_set: {name!r} is not a subject set of lora_core.world (known: "
                         f"{', '.join(sets) or 'none'}); build the toy world with `python -m lora_core.toy build`")
    return sets[name]


def set_folder(name: str, split: str) -> str:
    """The set's ``split`` folder, relative to the repository when inside it (run hashes then do
    not depend on where the repository is checked out)."""
    from lora_core.models import REPO_ROOT

    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    folder = Path(subject_set(name).folder(split))
    folder = folder if folder.is_absolute() else REPO_ROOT / folder
    try:
        return folder.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return folder.as_posix()


def absolute_folder(folder: str) -> Path:
    """A folder as :func:`set_folder` spells it, made absolute (relative ones lie under the repository)."""
    from lora_core.models import REPO_ROOT

    return Path(folder) if Path(folder).is_absolute() else REPO_ROOT / folder


def set_keys(name: str, split: str) -> list[str]:
    """Every subject key of the set's ``split`` (file stems, sorted); a clear error when unbuilt."""
    folder = absolute_folder(set_folder(name, split))
    keys = sorted(path.stem for path in folder.glob("*.txt"))
    if not keys:
        raise FileNotFoundError(f"{folder}: no captions; build the toy world with `python -m lora_core.toy build`")
    return keys


def styled_prompt(name: str, caption: str) -> str:
    """``caption`` in the set's caption template, with its trigger word."""
    from lora_core.world import STYLE_CAPTION_TEMPLATE

    return STYLE_CAPTION_TEMPLATE.format(caption=caption, trigger=subject_set(name).trigger)


def caption_eval_set(name: str, split: str, n: int, keys: Sequence[str] | None = None) -> EvalSet:
    """``n`` captions of the set's ``split`` (seeded selection, as ``common.eval_set``), or of
    ``keys`` when given, paired with their subject keys; ``captions`` drop the trigger suffix."""
    keys = list(keys) if keys is not None else set_keys(name, split)
    if n < 1:
        raise ValueError(f"n: an evaluation set needs at least one prompt, got {n}")
    chosen = [keys[i] for i in _selection(len(keys), n)]
    folder = absolute_folder(set_folder(name, split))
    prompts = [(folder / f"{key}.txt").read_text(encoding="utf-8").splitlines()[0].strip() for key in chosen]
    suffix = styled_prompt(name, "")
    captions = [p[: -len(suffix)] if p.endswith(suffix) else p for p in prompts]
    return EvalSet(SPLITS[split], name, tuple(prompts), tuple(captions),
                   tuple(GENERATION_SEED_START + i for i in range(len(chosen))), tuple(chosen))


def abstract_eval_set(name: str, n: int, ideas: Sequence[Idea] = ABSTRACT_IDEAS) -> EvalSet:
    """The first ``n`` abstract ideas as prompts in the set's template (captions: the idea alone)."""
    if not 1 <= n <= len(ideas):
        raise ValueError(f"n: between 1 and {len(ideas)} abstract prompts, got {n}")
    words = tuple(idea.word for idea in ideas[:n])
    return EvalSet("abstract prompts", name, tuple(styled_prompt(name, w) for w in words), words,
                   tuple(GENERATION_SEED_START + i for i in range(n)))


# ---- can the stand-in be trusted on a group? ----------------------------------------------------

def top1_hits(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, image_labels: Sequence[str],
              text_labels: Sequence[str]) -> np.ndarray:
    """Per image: whether its own label's text is the most similar of all texts (cosine; ties go to
    the first text, as ``metrics.alignment.retrieval_accuracy``).

    >>> images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    >>> top1_hits(images, torch.eye(2), ["a", "b", "b"], ["a", "b"]).tolist()
    [True, True, False]
    """
    unknown = sorted(set(image_labels) - set(text_labels))
    if unknown:
        raise ValueError(f"image_labels: no text for {unknown[:5]}")
    similarity = (torch.nn.functional.normalize(image_embeddings.float(), dim=-1)
                  @ torch.nn.functional.normalize(text_embeddings.float(), dim=-1).T).numpy()
    best = np.argmax(similarity, axis=1)   # argmax keeps the first of equal maxima
    return np.asarray(text_labels, dtype=object)[best] == np.asarray(image_labels, dtype=object)


def trust_verdict(hits: int, n: int, chance: float) -> str:
    """``"trusted"`` when the Wilson 95% interval of top-1 accuracy lies above chance, else
    ``"not trusted"`` (the stand-in's reading of that group is then not evidence).

    >>> trust_verdict(9, 20, 1 / 25), trust_verdict(2, 20, 1 / 25)
    ('trusted', 'not trusted')
    """
    return "trusted" if wilson_interval(hits, n)[0] > chance else "not trusted"


def trust_rows(group: str, hits: np.ndarray, own_scores: np.ndarray, held_out: np.ndarray,
               n_texts: int) -> list[dict[str, Any]]:
    """Top-1 accuracy with Wilson intervals, against chance ``1 / n_texts``, over the stand-in's
    held-out subjects and over every image, with :func:`trust_verdict`, and the mean AlignScore
    of each real image with its own prompt (the score a perfect generation would get)."""
    rows = []
    for images, mask in (("stand-in held-out subjects", held_out), ("all", np.ones_like(held_out))):
        k, n = int(hits[mask].sum()), int(mask.sum())
        low, high = wilson_interval(k, n) if n else (float("nan"), float("nan"))
        rows.append({"group": group, "real images": images, "n": n, "top-1 hits": k,
                     "top-1 accuracy": k / n if n else float("nan"), "ci_low": low, "ci_high": high,
                     "chance": 1 / n_texts, "verdict": trust_verdict(k, n, 1 / n_texts) if n else "not measured",
                     "own-prompt AlignScore": float(own_scores[mask].mean()) if n else float("nan")})
    return rows


def trust_check(scorer, concrete: EvalSet, ideas: Sequence[Idea], vendor: str, resolution: int,
                stand_in_held_out: set[str]) -> pd.DataFrame:
    """:func:`trust_rows` for both groups on real images of ``vendor``: the concrete prompts' true
    images against the concrete captions, and every image that depicts an idea against the ideas."""
    from lora_core.metrics.alignment import clip_score_pairs
    from lora_core.metrics.style import load_true_images
    from lora_core.world import true_images_dir

    folder = true_images_dir(vendor)
    depicting = [(key, idea.word) for idea in ideas for key, _ in idea.depicted_by if (folder / f"{key}.png").is_file()]
    groups = {CONCRETE: (list(concrete.subject_keys), list(concrete.subject_keys), list(concrete.captions),
                         list(concrete.subject_keys)),
              ABSTRACT: ([k for k, _ in depicting], [w for _, w in depicting], [idea.word for idea in ideas],
                         [idea.word for idea in ideas])}
    rows = []
    for group, (keys, labels, texts, text_labels) in groups.items():
        image_embeddings = scorer.embed_images(load_true_images(keys, folder, resolution))
        text_embeddings = scorer.embed_texts(texts)
        own = text_embeddings[[text_labels.index(label) for label in labels]]
        hits = top1_hits(image_embeddings, text_embeddings, labels, text_labels)
        own_scores = clip_score_pairs(image_embeddings, own).double().numpy()
        rows += trust_rows(group, hits, own_scores, np.array([k in stand_in_held_out for k in keys]), len(texts))
    return pd.DataFrame(rows)


# ---- alignment of generations, per group -------------------------------------------------------

def alignment_scores(scorer, images: dict[tuple[str, int | None, str], torch.Tensor],
                     sets: dict[str, EvalSet]) -> pd.DataFrame:
    """One row per generation of the two prompt groups: model, seed, group, prompt (its caption or
    idea) and the stand-in's score against it."""
    frames = []
    for (model, seed, group), generated in images.items():
        if group in (CONCRETE, ABSTRACT):
            texts = list(sets[group].captions)
            frames.append(pd.DataFrame({"model": model, "seed": seed, "group": group, "prompt": texts,
                                        "score": scorer.pair_scores(generated, texts).double().numpy()}))
    return pd.concat(frames, ignore_index=True)


def alignment_summary(scores: pd.DataFrame, metric: str, backbone: str, n_resamples: int) -> pd.DataFrame:
    """Per model and group: the mean score over seeds with a 95% interval (t over the seeds' means,
    or a bootstrap over prompts for a single run), and the standard deviation over prompts (S5's
    "+-", pooled over seeds)."""
    from lora_core.experiments.evaluate import aggregate_seeds
    from lora_core.metrics.stats import bootstrap_result

    rows = []
    for (model, seed, group), run in scores.groupby(["model", "seed", "group"], sort=False, dropna=False):
        result = bootstrap_result(metric, backbone, run["score"].to_numpy(), n_resamples=n_resamples,
                                  generator=torch.Generator().manual_seed(0))
        rows.append({"model": model, "seed": seed, "group": group, "measure": "alignment", **result.to_dict()})
    summary = aggregate_seeds(pd.DataFrame(rows))
    spread = scores.groupby(["model", "group"], sort=False)["score"].agg(std="std", n_prompts="count").reset_index()
    return summary.merge(spread, on=["model", "group"])


def seed_means(scores: pd.DataFrame, group: str | None = None) -> pd.DataFrame:
    """Each run's mean score (``model``, ``seed``, ``group``, ``value``), of one group if given."""
    means = scores.groupby(["model", "seed", "group"], sort=False)["score"].mean().rename("value").reset_index()
    return means[means["group"] == group] if group else means


def group_gap(scores: pd.DataFrame, model: str) -> MetricResult:
    """Concrete minus abstract mean score of ``model``, paired by training seed."""
    means = seed_means(scores)
    rows = means[means["model"] == model].drop(columns="model").rename(columns={"group": "model"})
    return paired_gap(rows, "value", CONCRETE, ABSTRACT)


def s5_alignment_table(summary: pd.DataFrame, ranks: Sequence[int], reported: pd.DataFrame) -> pd.DataFrame:
    """Per rank and prompt group: S5's CLIP score mean +- std beside our AlignScore (stand-in) mean
    +- std over prompts and its 95% interval (over seeds)."""
    rows = []
    for rank in ranks:
        for group, s5_group in ((CONCRETE, "normal"), (ABSTRACT, "abstract")):
            theirs = reported[reported["setting"] == s5_setting(rank, s5_group)].set_index("metric")["value"]
            ours = (summary[(summary["model"] == model_label(rank)) & (summary["group"] == group)]
                    if len(summary) else summary)
            row = {"rank": rank, "prompts": f"{group} (S5: {s5_group})",
                   "S5 CLIP score": (f"{theirs['CLIP_mean']:.2f} +- {theirs['CLIP_std']:.2f}"
                                     if {"CLIP_mean", "CLIP_std"} <= set(theirs.index) else "-")}
            found = ours.iloc[0] if len(ours) else None
            if found is None:
                row.update({"ours: AlignScore (stand-in)": NOT_MEASURED, "ours: 95% interval": "-"})
            else:
                row.update({"ours: AlignScore (stand-in)": f"{found['value']:.2f} +- {found['std']:.2f}",
                            "ours: 95% interval": f"[{found['ci_low']:.2f}, {found['ci_high']:.2f}]"})
            rows.append(row)
    return pd.DataFrame(rows)
