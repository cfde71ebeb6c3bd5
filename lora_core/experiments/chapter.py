"""The one shape of every chapter: ``run_<chapter>(profile, **params) -> Result``.

Each chapter of the book has a module in ``lora_core/experiments/`` with one entry point::

    def run_<chapter>(profile: Profile | str = "tiny", *, base=None, runs_root=None,
                      **params) -> <Chapter>Result

whose keyword parameters are the notebook's ``parameters`` cell (same names, same defaults;
``0``/``None``/``()`` mean "the profile's value"). It trains or reuses its runs, generates,
scores, and returns a dataclass deriving from :class:`ChapterResult`: the tables and images
the notebook shows, and ``facts``, every number or sentence the prose quotes. The notebook
then only calls it, glues ``result.facts`` (:func:`glue_facts`), shows tables with
:func:`show_table` and draws figures with ``lora_core.plots``; decision rules (which style won,
whether two rankings agree) are tested functions in the chapter's module, never expressions in
a notebook.

Every chapter's notebook has the same cells (``notebooks/01_style_benchmark.py`` is the model):
a markdown cell with the title, the question and a "What this build found" box of glued
sentences (facts named ``found_*``); the ``parameters`` cell and one cell that imports, calls
``run_<chapter>`` and glues, both tagged ``hide-input``; then sections of prose, each followed
by the cells that show a table or draw a figure from ``result``.

>>> result = ChapterResult(resolve_profile("smoke"))
>>> result.add_facts(n_seeds=2, verdict="no clear change")
>>> sorted(result.facts), result.facts["profile_name"]
(['n_seeds', 'profile_name', 'profile_note', 'verdict'], 'smoke')
>>> resolve_profile("tiny", n_seeds=0).n_seeds == resolve_profile("tiny").n_seeds
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lora_core.profiles import Profile, get_profile

LONG_TEXT = 60  # characters from which a table's text column wraps instead of running on one line
SMOKE_NOTE = ("This page was built with the smoke profile: a random model trained for a few steps, so every "
              "number and picture on it is noise and only shows that the pipeline runs.")


def profile_note(profile: Profile) -> str:
    """The sentence every chapter shows under its title: what the profile is, and for ``smoke``
    that its numbers mean nothing.

    >>> profile_note(get_profile("tiny")).startswith("Profile tiny: offline CPU")
    True
    """
    if profile.name == "smoke":
        return SMOKE_NOTE
    return f"Profile {profile.name}: {profile.description}."


def backbone_note(profile: Profile) -> str:
    """The networks behind a page's measures, for figure titles (stand-ins named as they are).

    >>> backbone_note(get_profile("smoke"))
    'backbones: effnet-lite0, st-lpips-alex, none'
    """
    return f"backbones: {profile.feature_backbone}, {profile.lpips_backbone}, {profile.alignment_backbone}"


def resolve_profile(profile: Profile | str, **overrides: Any) -> Profile:
    """A Profile from a name or an instance; ``overrides`` whose value is 0, None or empty keep the
    profile's own value (the notebooks' convention for "default"), others replace it."""
    settings = get_profile(profile) if isinstance(profile, str) else profile
    given = {key: value for key, value in overrides.items() if value not in (0, None, (), [], "")}
    return settings.replace(**given) if given else settings


@dataclass
class ChapterResult:
    """What every chapter's ``run_<chapter>`` returns at least: the profile it ran with and the
    facts its prose quotes (glued by name; each chapter's module documents its keys).

    Subclasses add their tables and images as keyword-only fields
    (``@dataclass(kw_only=True)``), so they may come without defaults."""

    profile: Profile
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.facts.setdefault("profile_name", self.profile.name)
        self.facts.setdefault("profile_note", profile_note(self.profile))

    def add_facts(self, **facts: Any) -> None:
        """Record numbers or sentences for the prose (a later value for a key replaces the earlier)."""
        self.facts.update(facts)


def glue_facts(facts: Mapping[str, Any], prefix: str = "") -> None:
    """``myst_nb.glue`` every fact without displaying it, names optionally prefixed (cross-page
    glue needs names unique within a page only)."""
    from myst_nb import glue

    for name, value in facts.items():
        glue(f"{prefix}{name}", value, display=False)


def _number_text(value: Any) -> str:
    """Four significant digits, whole numbers from 10,000 on, empty for a missing value.

    >>> [_number_text(v) for v in (0.000123456, 3.14159, 2.0, 123456.7, float("nan"))]
    ['0.0001235', '3.142', '2', '123457', '']
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def show_table(frame, first: Sequence[str] = (), caption: str | None = None):
    """``frame`` as the book shows a table: a labelled index turned into columns, the ``first``
    columns leading (what a reader looks a row up by), the others after them in their order, no
    index column, floats to four significant digits, and an optional caption. Wide tables scroll
    sideways on the page (``book/_static/book.css`` keeps cells on one line, except text longer
    than :data:`LONG_TEXT` characters, which wraps in a column of reading width).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"loss": [0.51234], "config_hash": ["ab12"]}, index=pd.Index(["lora"], name="method"))
    >>> styler = show_table(frame, first=["config_hash"])
    >>> list(styler.data.columns), styler.hide_index_[0], "0.5123" in styler.to_html()
    (['config_hash', 'method', 'loss'], True, True)
    """
    import pandas as pd

    labelled = any(name is not None for name in frame.index.names)
    table = frame.reset_index() if labelled else frame.copy()
    table.columns = [" ".join(map(str, c)).strip() if isinstance(c, tuple) else c for c in table.columns]
    unknown = [c for c in first if c not in table.columns]
    if unknown:
        raise ValueError(f"first: no column {unknown} in the table (columns: {list(table.columns)})")
    order = list(first) + [c for c in table.columns if c not in first]
    floats = [c for c in order if pd.api.types.is_float_dtype(table[c])]
    prose = [c for c in order if table[c].dtype == object and table[c].astype(str).str.len().max() > LONG_TEXT]
    styler = (table[order].style.hide(axis="index").format(_number_text, subset=floats)
              .set_properties(subset=prose, **{"white-space": "normal", "min-width": "22em"})
              .set_table_attributes('class="dataframe"'))  # the theme's table style
    return styler.set_caption(caption) if caption else styler
