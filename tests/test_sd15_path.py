"""The sd15 profile's whole code path on the CPU, on a tiny random model saved in SD v1.5's hub
layout: loaded by the profile's own hub id (from a local hub cache, offline), as a diffusers folder
and as a single-file checkpoint, trained with the profile's settings where a CPU can take them,
then generation and metrics. The only step a real platform adds is the download."""
import json
import shutil

import pytest
import torch

from lora_core import sd15
from lora_core.formats.single_file import save_single_file
from lora_core.models import load_base
from lora_core.profiles import PROFILES


@pytest.fixture(scope="module")
def sd15_layout(tiny_base, tmp_path_factory):
    return sd15.save_hub_layout(tiny_base, tmp_path_factory.mktemp("sd15") / "stable-diffusion-v1-5")


@pytest.fixture
def hub_cache(sd15_layout, tmp_path, monkeypatch):
    """A local hub cache holding the tiny model as the snapshot of SD v1.5's hub id."""
    import huggingface_hub.constants as hub_constants

    revision = "1" * 40
    repo = tmp_path / "hub" / ("models--" + sd15.HUB_ID.replace("/", "--"))
    shutil.copytree(sd15_layout, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo


def _unet_output(base):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    ids = base.tokenizer(["a red heart", "a cat face"], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return base.unet(latents, torch.tensor([10, 500]), base.text_encoder(ids)[0]).sample


def test_the_layout_has_sd15s_files_and_config_keys(sd15_layout):
    files = sorted(p.relative_to(sd15_layout).as_posix() for p in sd15_layout.rglob("*") if p.is_file())
    assert files == sorted(sd15.HUB_FILES)

    def read(name):
        return json.loads((sd15_layout / name).read_text())

    index = read("model_index.json")
    assert {k: v for k, v in index.items() if k != "_diffusers_version"} == sd15.MODEL_INDEX
    assert {k: v for k, v in read("scheduler/scheduler_config.json").items() if k != "_diffusers_version"} == sd15.SCHEDULER
    assert read("tokenizer/tokenizer_config.json") == sd15.TOKENIZER_CONFIG
    for name, published in (("unet", sd15.UNET), ("vae", sd15.VAE), ("text_encoder", sd15.TEXT_ENCODER)):
        missing = set(published) - set(read(f"{name}/config.json"))
        assert not missing, f"{name}/config.json lacks SD v1.5's keys {sorted(missing)}"


def test_the_profiles_hub_id_a_folder_and_a_single_file_load_the_same_model(tiny_base, sd15_layout, hub_cache,
                                                                              tmp_path):
    """Before lora_core.models passed feature_extractor=None, the single file failed here: SD v1.5's
    model_index.json names CLIPFeatureExtractor, which transformers 5 no longer has."""
    expected = _unet_output(tiny_base)
    single = save_single_file(tiny_base, tmp_path / "sd15-tiny.safetensors")
    for base in (load_base(PROFILES["sd15"].base_model), load_base(str(sd15_layout)),
                 load_base(str(single), config=str(sd15_layout)), load_base(str(single))):  # config: SD v1.5's id
        assert torch.equal(_unet_output(base), expected), base.source
        assert len(base.tokenizer) == len(tiny_base.tokenizer) and not base.random_weights


def test_a_single_file_alone_without_the_hub_says_what_it_needs(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    with pytest.raises(ValueError, match=r"model.safetensors: a single-file checkpoint needs config=.*"
                                         r"SD v1.5's \(stable-diffusion-v1-5/stable-diffusion-v1-5\) are read from"):
        load_base(str(single))


def test_training_generation_and_metrics_with_the_sd15_settings(hub_cache, tmp_path, one_thread):
    """The sd15 profile as it is, except what a CPU cannot take: float32 instead of fp16 mixed
    precision (no fast half precision on a CPU), the tiny model's 32 px instead of 512, a few steps
    and images, and the offline metric networks instead of LPIPS proper and CLIP (hub weights).
    Gradient accumulation and checkpointing are switched on to run them (the plans use them on
    smaller cards and for full fine-tunes); 8-bit AdamW, rank 16 and SDPA are the profile's."""
    from lora_core.experiments.common import eval_set, generate_eval_images, style_lora_config
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.train import train

    profile = PROFILES["sd15"].replace(
        mixed_precision="no", device="cpu", resolution=32, train_steps=2, batch_size=2,
        gradient_accumulation_steps=2, gradient_checkpointing=True, checkpoint_every_steps=1, inference_steps=2,
        n_eval_images=2, n_bootstrap=20, lpips_backbone="st-lpips-alex", alignment_backbone="none",
        fid_backbone="none")
    config = style_lora_config(profile, "twemoji", seed=0)
    assert (config.base_model, config.optimizer, config.options.rank) == (sd15.HUB_ID, "adamw8bit", 16)
    assert config.gradient_accumulation_steps == 2 and config.gradient_checkpointing and config.attention == "sdpa"
    record = train(config, runs_root=tmp_path / "runs", progress=False)
    assert record.summary["base_model"] == sd15.HUB_ID and record.summary["steps"] == 2
    assert record.summary["versions"]["torch_cuda"] and "gpu" in record.summary["versions"]

    base = load_base(profile.base_model)
    prompts = eval_set("twemoji", "heldout", profile.n_eval_images)
    images = generate_eval_images(base, prompts.prompts, prompts.seeds, profile, adapter=record.exports["diffusers"],
                                  cache_dir=tmp_path / "generated")
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    measures = ("feature_to_target", "st_lpips_to_target", "pixel_mse_to_target", "st_lpips_diversity")
    table = Evaluator(profile, n_resamples=20).evaluate(images, prompts, "twemoji", measures=measures)
    assert sorted(table["measure"]) == sorted(measures)
    assert table.set_index("measure")["n"].to_dict() == {**dict.fromkeys(measures, 2), "st_lpips_diversity": 1}
    assert table["value"].map(float).between(0, float("inf")).all()
