"""The one shape of every chapter: ``run_<chapter>(profile, **params) -> Result``.

Each chapter of the book has a module in ``lora_core/experiments/`` with one entry point::

    def run_<chapter>(profile: Profile | str = "tiny", *, base=None, runs_root=None,
                      **params) -> <Chapter>Result

whose keyword parameters are the notebook's ``parameters`` cell (same names, same defaults;
``0``/``None``/``()`` mean "the profile's value"). It trains or reuses its runs, generates,
scores, and returns a dataclass deriving from :class:`ChapterResult`: the tables and images
the notebook shows, and ``facts``, every number or sentence the prose quotes. The notebook
then only calls it, glues ``result.facts`` (:func:`glue_facts`) and draws figures from
``lora_core.plots``; decision rules (which style won, whether two rankings agree) are tested
functions in the chapter's module, never expressions in a notebook.

>>> result = ChapterResult(resolve_profile("smoke"))
>>> result.add_facts(n_seeds=2, verdict="no clear change")
>>> sorted(result.facts), result.facts["profile_name"]
(['n_seeds', 'profile_name', 'profile_note', 'verdict'], 'smoke')
>>> resolve_profile("tiny", n_seeds=0).n_seeds == resolve_profile("tiny").n_seeds
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from lora_core.profiles import Profile, get_profile

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


def resolve_profile(profile: Profile | str, **overrides: Any) -> Profile:
    """A Profile from a name or an instance; ``overrides`` whose value is 0, None or empty keep the
    profile's own value (the notebooks' convention for "default"), others replace it."""
    settings = get_profile(profile) if isinstance(profile, str) else profile
    given = {key: value for key, value in overrides.items() if value not in (0, None, (), [], "")}
    return settings.replace(**given) if given else settings


@dataclass
class ChapterResult:
    """What every chapter's ``run_<chapter>`` returns at least: the profile it ran with and the
    facts its prose quotes (glued by name; each chapter's module documents its keys)."""

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
