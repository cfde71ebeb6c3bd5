"""Phase 3 (the VAE fine-tuned on every vendor): resumes bit for bit, the anchor holds the anchor
vendor's latents, held-out subjects stay out, and the export keeps the scaling factor."""
import json
import shutil

import pytest
import torch

from lora_core.toy import vae_finetune
from lora_core.toy.vae_finetune import VaeFinetuneConfig, finetune_vae, heldout_keys, vendor_report
from lora_core.world import DATA_DIR, STYLE_SETS, VENDORS, true_images_dir

pytestmark = pytest.mark.skipif(not (DATA_DIR / "emoji").exists(), reason="run `python -m lora_core.toy build`")
QUIET = dict(log=lambda _: None, checkpoint_minutes=1e9)
CFG = VaeFinetuneConfig(base_model="tiny-random", batch_size=2, anchor_batch_size=2, warmup_steps=2, log_every=2,
                        eval_every=2, lr=1e-2)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """Six subjects drawn by every vendor, two of them held out, served where the phase looks."""
    root = tmp_path_factory.mktemp("world")
    shared = set.intersection(*({p.stem for p in true_images_dir(vendor).glob("*.png")} for vendor in VENDORS))
    keys = sorted(shared)[:6]
    for vendor in VENDORS:
        (root / vendor).mkdir()
        for key in keys:
            shutil.copy(true_images_dir(vendor) / f"{key}.png", root / vendor)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vae_finetune, "true_images_dir", lambda vendor: root / vendor)
        patch.setattr(vae_finetune, "heldout_keys", lambda base_keys, cfg: set(keys[:2]))
        yield root


@pytest.fixture(scope="module")
def runs(small_world, tmp_path_factory):
    """Run A: 4 steps at once; run B: 2 steps, then resumed to 4."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    finetune_vae(CFG, a, max_steps=4, **QUIET)
    finetune_vae(CFG, b, max_steps=2, **QUIET)
    finetune_vae(CFG, b, max_steps=4, **QUIET)
    return a, b


def _state(folder):
    return torch.load(folder / f"{vae_finetune.PHASE}.pt", weights_only=True)


def test_resume_equals_uninterrupted(runs):
    a, b = (_state(folder) for folder in runs)
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][name], b[part][name]) for name in a[part]), part
    assert any(not torch.equal(a["model"][name], a["ema"][name]) for name in a["model"])


def test_the_anchor_holds_the_anchor_vendors_latents(small_world, tmp_path):
    moved = {}
    for weight in (0.0, 1e4):
        cfg = CFG.replace(anchor_weight=weight, logvar_anchor_weight=weight)
        finetune_vae(cfg, tmp_path / str(weight), max_steps=4, **QUIET)
        vae = vae_finetune.reference_vae(cfg, tmp_path / str(weight))
        frozen = vae_finetune.reference_vae(cfg, tmp_path / str(weight))
        vae.load_state_dict(_state(tmp_path / str(weight))["model"])
        moved[weight] = vendor_report(vae, frozen, cfg)[cfg.anchor_vendor]["latent_relative_change"]
    assert moved[1e4] < moved[0.0] / 10


def test_held_out_subjects_of_every_style_set_are_excluded():
    base_keys = [p.stem for p in sorted(true_images_dir("noto").glob("*.png"))]
    excluded = heldout_keys(base_keys, VaeFinetuneConfig())
    for style in STYLE_SETS:
        assert {p.stem for p in (DATA_DIR / "styles" / style / "heldout").glob("*.png")} <= excluded


def test_export_writes_the_ema_vae_keeps_the_scaling_factor_and_adds_the_card_section(runs, tiny_base_dir):
    from lora_core.models import load_base

    model_dir = tiny_base_dir.parent / "exported"
    shutil.copytree(tiny_base_dir, model_dir)
    (model_dir / "export_info.json").write_text("{}")
    (model_dir / "MODEL_CARD.md").write_text("# card\n\n## Checks\nnone\n")
    scaling = load_base(str(model_dir)).vae.config.scaling_factor
    vae_finetune.export_vae(CFG, runs[0], model_dir, log=lambda _: None)
    exported = load_base(str(model_dir)).vae
    ema = _state(runs[0])["ema"]
    assert exported.config.scaling_factor == scaling
    assert all(torch.equal(tensor, ema[name].to(torch.float16).float()) for name, tensor in exported.state_dict().items())
    info = json.loads((model_dir / "export_info.json").read_text())
    assert info["vae_finetune"]["steps"] == 4 and set(info["vae_finetune"]["vendors"]) == set(VENDORS)
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert card.index("## Phase 3") < card.index("## Checks")
    vae_finetune.export_vae(CFG, runs[0], model_dir, log=lambda _: None)   # again: the section is replaced
    assert (model_dir / "MODEL_CARD.md").read_text().count("## Phase 3") == 1
    assert "_name_or_path" not in json.loads((model_dir / "vae" / "config.json").read_text())
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []  # no staging left
