"""Weight-file formats: single-file (LDM) checkpoints and LoRA files, against diffusers' own loaders."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_core.formats import SingleFileKeyError, check_single_file, save_single_file
from lora_core.models import build_tiny_random, load_base


@pytest.fixture(scope="module")
def tiny_base():
    return build_tiny_random(seed=0)


@pytest.fixture(scope="module")
def tiny_folder(tiny_base, tmp_path_factory):
    return tiny_base.save(tmp_path_factory.mktemp("base") / "tiny-diffusers")


@pytest.fixture(scope="module")
def single_file(tiny_base, tmp_path_factory):
    return save_single_file(tiny_base, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def _component_outputs(base) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    images = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    token_ids = base.tokenizer(["a photo of a red cat", "emoji"], padding="max_length",
                               max_length=base.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        text_states = base.text_encoder(token_ids)[0]
        return {"text_encoder": text_states,
                "unet": base.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text_states).sample,
                "vae_encode": base.vae.encode(images).latent_dist.mean,
                "vae_decode": base.vae.decode(latents).sample}


def test_single_file_uses_the_ldm_layout_diffusers_converts_back(tiny_base, single_file):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    checkpoint = load_file(single_file)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in checkpoint
    assert checkpoint["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in LDM
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in checkpoint
    for converted, module in [(convert_ldm_unet_checkpoint(checkpoint, dict(tiny_base.unet.config)), tiny_base.unet),
                              (convert_ldm_vae_checkpoint(checkpoint, dict(tiny_base.vae.config)), tiny_base.vae)]:
        reference = module.state_dict()
        assert converted.keys() == reference.keys()
        assert all(torch.equal(converted[key], reference[key]) for key in reference)


def test_single_file_round_trips_through_load_base(tiny_base, tiny_folder, single_file):
    reloaded = load_base(str(single_file), config=tiny_folder)
    expected, actual = _component_outputs(tiny_base), _component_outputs(reloaded)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_single_file_key_check_names_missing_and_misshapen_tensors(single_file, tiny_folder, tmp_path):
    check_single_file(single_file, tiny_folder)
    checkpoint = load_file(single_file)
    del checkpoint["model.diffusion_model.middle_block.1.proj_in.weight"]
    checkpoint["first_stage_model.decoder.conv_in.bias"] = torch.zeros(3)
    broken = tmp_path / "broken.safetensors"
    save_file(checkpoint, str(broken))
    with pytest.raises(SingleFileKeyError, match=r"1 missing, 1 with the wrong shape(.|\n)*"
                                                 r"middle_block\.1\.proj_in\.weight(.|\n)*decoder\.conv_in\.bias"):
        check_single_file(broken, tiny_folder)


@pytest.mark.parametrize("suffix", [".ckpt", ".bin"])
def test_load_base_refuses_pickle_checkpoints(tmp_path, suffix):
    with pytest.raises(ValueError, match=r"refusing to load a pickle(.|\n)*arbitrary code(.|\n)*\.safetensors"):
        load_base(str(tmp_path / f"model{suffix}"))


def test_single_file_must_be_safetensors(tiny_base, tmp_path):
    with pytest.raises(ValueError, match=r"model\.ckpt: a single-file checkpoint must be written as \.safetensors"):
        save_single_file(tiny_base, tmp_path / "model.ckpt")
