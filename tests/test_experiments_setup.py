"""Chapter 0: the set-up page's tables, the base's check 2 in words, and the sample sheet."""
import pytest

from lora_core.experiments import setup
from lora_core.profiles import get_profile
from lora_core.toy import STYLE_SETS

SMOKE = get_profile("smoke")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_check2_in_words_follows_the_target():
    within = setup.check2_facts({"check2_ratio": 2.27, "check2_target_ratio": 2.5,
                                 "check2_subject_category_accuracy_generated": 0.39})
    assert within == {"check2_ratio": "2.3x", "check2_target": "within the target of at most 2.5x",
                      "check2_subjects": "39%"}
    above = setup.check2_facts({"check2_ratio": 3.43, "check2_target_ratio": 2.5})
    assert above["check2_target"].startswith("above the target of at most 2.5x") and above["check2_subjects"] == "nan%"
    assert setup.check2_sentence({}) == ("This profile does not use the shipped tiny base, so its quality checks "
                                         "do not apply.")
    assert setup.check2_sentence({"check2_ratio": 2.27, "check2_target_ratio": 2.5,
                                  "check2_subject_category_accuracy_generated": 0.39}) == (
        "The base's generations sit at 2.3x the VAE's round-trip error from the real images (within the target of "
        "at most 2.5x), and the subject classifier recognises the category of 39% of them.")


def test_run_setup_on_the_smoke_profile(tiny_base):
    result = setup.run_setup("smoke", base=tiny_base, n_samples=2)
    assert result.facts["profile_note"].startswith("This page was built with the smoke profile")
    assert result.facts["check2_ratio"].startswith("not measured") and result.checks.empty
    assert result.facts["n_style_sets"] == len(STYLE_SETS) and result.facts["n_problem_files"] == 0
    assert result.facts["found_data"] == f"All {len(STYLE_SETS)} style sets (training and held-out splits) load " \
                                         "without a problem file."
    assert set(result.style_sets["style"]) == set(STYLE_SETS) and set(result.style_sets["split"]) == {"train", "heldout"}
    assert result.style_sets["folder"].str.startswith("data/styles/").all()  # no machine path on the page
    sizes = result.model_size.set_index("part")
    assert sizes.loc["unet", "parameters (M)"] == round(sum(p.numel() for p in tiny_base.unet.parameters()) / 1e6, 2)
    assert sizes["random weights"].all()
    settings = result.settings.set_index("setting")
    assert settings.loc["train_steps", "value"] == SMOKE.train_steps and settings.loc["train_steps", "meaning"]
    assert "diffusers" in set(result.environment["component"])
    sources = list(dict.fromkeys(result.samples.table["source"]))
    assert sources == ["real noto"] + [f"real {s.vendor}" for s in STYLE_SETS.values()] + ["base model (smoke)"]
    assert len(result.samples.images) == 2 * len(sources) and result.samples.images[-1].shape == (32, 32, 3)
