"""Pretraining resumes bit for bit, refuses a foreign checkpoint, and exports a loadable base."""
import json
import shutil

import pytest
import torch

from lora_core.world import DATA_DIR, TRIGGER_WORDS
from lora_core.toy.check import per_image_mse, psnr
from lora_core.toy.pretrain import PretrainConfig, pretrain_unet, pretrain_vae, read_log, vae_heldout_keys

pytestmark = pytest.mark.skipif(not (DATA_DIR / "base").exists(), reason="run `python -m lora_core.toy build`")
QUIET = dict(log=lambda _: None, checkpoint_minutes=1e9)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    for png in sorted((DATA_DIR / "base").glob("*.png"))[:12]:
        shutil.copy(png, folder)
        shutil.copy(png.with_suffix(".txt"), folder)
    return PretrainConfig(data_dir=str(folder), vae_batch_size=4, unet_batch_size=4, vocab_size=600,
                          log_every=2, eval_every=2, warmup_steps=2, vae_heldout_fraction=0.2)


def _state(out, phase):
    return torch.load(out / f"{phase}.pt", weights_only=True)


def _assert_same_state(a, b):
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name} differs"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"] and a["step"] == b["step"]


@pytest.fixture(scope="module")
def runs(cfg, tmp_path_factory):
    """Run A: 4 VAE + 4 UNet steps at once. Run B: the same, each phase stopped at 2 and resumed."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    pretrain_vae(cfg, a, max_steps=4, **QUIET)
    pretrain_unet(cfg, a, max_steps=4, **QUIET)
    pretrain_vae(cfg, b, max_steps=2, **QUIET)
    pretrain_vae(cfg, b, max_steps=4, **QUIET)
    pretrain_unet(cfg, b, max_steps=2, **QUIET)
    pretrain_unet(cfg, b, max_steps=4, **QUIET)
    return a, b


@pytest.mark.parametrize("phase", ["vae", "unet"])
def test_resume_equals_uninterrupted(runs, phase):
    a, b = runs
    _assert_same_state(_state(a, phase), _state(b, phase))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed_s", "wall")} for r in rows]
    assert drop_timing(read_log(a / f"{phase}_loss.jsonl")) == drop_timing(read_log(b / f"{phase}_loss.jsonl"))
    assert [r["step"] for r in read_log(b / f"{phase}_loss.jsonl")] == [2, 4]


def test_training_moved_the_weights_and_ema_lags(runs, cfg):
    state = _state(runs[0], "unet")
    name = "unet.conv_in.weight"
    assert not torch.equal(state["model"][name], state["ema"][name])
    assert state["done"] is True


def test_resume_with_another_config_is_refused(runs, cfg):
    with pytest.raises(ValueError, match="written with another config"):
        pretrain_vae(cfg.replace(vae_lr=1e-4), runs[0], max_steps=6, **QUIET)


def _copy_vae_phase(src, dst):
    for name in ("vae.pt", "latents.pt", "tokenizer"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, dst / name)


def test_lr_decay_added_on_resume_equals_decay_from_the_start(runs, cfg, tmp_path):
    """Warmup-stable-decay: a constant-lr checkpoint continued with a decay that starts at its step
    gives the same weights as a run that had the decay from step 0, and stops where the lr hits 0."""
    decayed = cfg.replace(unet_decay_start=2, unet_decay_steps=3)
    c, d = tmp_path / "c", tmp_path / "d"
    for folder in (c, d):
        folder.mkdir()
        _copy_vae_phase(runs[0], folder)
    pretrain_unet(cfg, c, max_steps=2, **QUIET)
    pretrain_unet(decayed, c, **QUIET)
    pretrain_unet(decayed, d, **QUIET)
    _assert_same_state(_state(c, "unet"), _state(d, "unet"))
    assert _state(d, "unet")["step"] == 5
    # each row logs the lr of the step after it: steps 2 and 4 of 0..4 (multipliers 1, 1/3)
    assert [r["lr"] for r in read_log(d / "unet_loss.jsonl")] == pytest.approx([cfg.unet_lr, cfg.unet_lr / 3])
    with pytest.raises(ValueError, match="written with another config"):  # decay would rewrite steps 3, 4
        pretrain_unet(cfg.replace(unet_decay_start=3, unet_decay_steps=2), d, **QUIET)


def test_vae_heldout_keeps_skin_tones_with_their_emoji():
    keys = ["1f44d", "1f44d-1f3fb", "1f44d-1f3ff", "1f600", "2764", "1f431"]
    for seed in range(5):
        held = vae_heldout_keys(keys, 0.5, seed)
        assert ("1f44d" in held) == ("1f44d-1f3fb" in held) == ("1f44d-1f3ff" in held)
        assert len({k.split("-")[0] for k in held}) == 2


def test_export_round_trips_through_load_base(runs, cfg, tmp_path):
    from lora_core.models import load_base
    from lora_core.toy.export import export

    model_dir = export(cfg, runs[0], tmp_path / "tiny-sd", log=lambda _: None)
    base = load_base(str(model_dir))
    ema = _state(runs[0], "unet")["ema"]
    loaded = base.unet.state_dict()
    for name in ("conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"):
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], ema[f"unet.{name}"].half().float())
    for word in TRIGGER_WORDS:
        assert base.tokenizer.tokenize(f"a {word}") == ["a</w>", f"{word}</w>"]
    latents = torch.load(runs[0] / "latents.pt", weights_only=True)
    assert base.vae.config.scaling_factor == pytest.approx(float(latents["scaling_factor"]), abs=1e-5)
    info = json.loads((model_dir / "export_info.json").read_text())
    assert info["unet_steps"] == 4 and info["weights_bytes"] < 20_000_000
    assert "4 steps of batch 4" in (model_dir / "MODEL_CARD.md").read_text()


def test_check_metrics_match_numpy():
    import numpy as np

    a = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    expected = ((a.numpy() / 255.0 - b.numpy() / 255.0) ** 2).reshape(3, -1).mean(1)
    assert np.allclose(per_image_mse(a, b).numpy(), expected)
    assert np.allclose(psnr(per_image_mse(a, b)).numpy(), 10 * np.log10(1 / expected))


def test_subject_accuracy_scores_generations_like_real_images_and_counts_the_majority_baseline():
    from collections import Counter

    from lora_core.experiments.common import eval_set
    from lora_core.metrics.style import SubjectGroupClassifier, load_true_images
    from lora_core.toy.check import subject_accuracy
    from lora_core.world import true_images_dir

    keys = list(eval_set("twemoji", "heldout", 24).subject_keys)
    real = load_true_images(keys, true_images_dir("noto"), 32)
    same = subject_accuracy(real, real, keys)
    assert same["subject_category_accuracy_generated"] == same["subject_category_accuracy_real"]
    groups = Counter(SubjectGroupClassifier().group_of[k] for k in keys)
    assert same["subject_category_majority_baseline"] == max(groups.values()) / len(keys)
    blank = torch.full_like(real, 255)  # white images: at most the share of one category is right
    assert subject_accuracy(blank, real, keys)["subject_category_accuracy_generated"] <= max(groups.values()) / len(keys)
