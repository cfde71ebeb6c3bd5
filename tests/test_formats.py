"""Weight-file formats: single-file (LDM) checkpoints and LoRA files, against diffusers' own loaders."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_core.formats import SingleFileKeyError, check_single_file, save_single_file
from lora_core.models import load_base


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


def test_single_file_round_trips_through_load_base(tiny_base, tiny_base_dir, single_file):
    reloaded = load_base(str(single_file), config=tiny_base_dir)
    expected, actual = _component_outputs(tiny_base), _component_outputs(reloaded)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_single_file_key_check_names_missing_and_misshapen_tensors(single_file, tiny_base_dir, tmp_path):
    check_single_file(single_file, tiny_base_dir)
    checkpoint = load_file(single_file)
    del checkpoint["model.diffusion_model.middle_block.1.proj_in.weight"]
    checkpoint["first_stage_model.decoder.conv_in.bias"] = torch.zeros(3)
    broken = tmp_path / "broken.safetensors"
    save_file(checkpoint, str(broken))
    with pytest.raises(SingleFileKeyError, match=r"1 missing, 1 with the wrong shape(.|\n)*"
                                                 r"middle_block\.1\.proj_in\.weight(.|\n)*decoder\.conv_in\.bias"):
        check_single_file(broken, tiny_base_dir)


@pytest.mark.parametrize("suffix", [".ckpt", ".bin"])
def test_load_base_refuses_pickle_checkpoints(tmp_path, suffix):
    with pytest.raises(ValueError, match=r"refusing to load a pickle(.|\n)*arbitrary code(.|\n)*\.safetensors"):
        load_base(str(tmp_path / f"model{suffix}"))


def test_single_file_must_be_safetensors(tiny_base, tmp_path):
    with pytest.raises(ValueError, match=r"model\.ckpt: a single-file checkpoint must be written as \.safetensors"):
        save_single_file(tiny_base, tmp_path / "model.ckpt")


# ---- LoRA files ---------------------------------------------------------------------------

RANK, ALPHA, TE_RANK, TE_ALPHA = 4, 8.0, 2, 3.0   # alpha != rank on purpose: scale 2.0 and 1.5
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]  # linear, 1x1 and 3x3 conv
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]
PROMPTS = ["a red cat"]


def _attach_random_lora(base, with_text_encoder: bool) -> None:
    from peft import LoraConfig

    base.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS,
                                     init_lora_weights="gaussian"), adapter_name="default")
    if with_text_encoder:
        base.text_encoder.add_adapter(LoraConfig(r=TE_RANK, lora_alpha=TE_ALPHA, target_modules=TE_TARGETS,
                                                 init_lora_weights="gaussian"), adapter_name="default")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero: make the LoRA change the outputs
        for model in (base.unet, base.text_encoder):
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def _images(pipe) -> torch.Tensor:
    return pipe(PROMPTS, num_inference_steps=2, height=32, width=32, guidance_scale=3.0, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


def _text_states(pipe) -> torch.Tensor:
    token_ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                               return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(token_ids)[0]


@pytest.fixture(scope="module", params=[False, True], ids=["unet-only", "unet+text-encoder"])
def saved_lora(request, tiny_base, tmp_path_factory):
    """An in-memory peft LoRA (alpha != rank), its reference outputs and both exported files."""
    from peft import get_peft_model_state_dict

    from lora_core.formats import provenance_metadata, save_lora_diffusers, save_lora_kohya

    with_text_encoder = request.param
    base = copy.deepcopy(tiny_base)
    pipe = base.pipeline()
    plain_images, plain_text = _images(pipe), _text_states(pipe)
    _attach_random_lora(base, with_text_encoder)
    text_encoder = base.text_encoder if with_text_encoder else None
    metadata = provenance_metadata(config_hash="abc123", method="lora", rank=RANK, alpha=ALPHA,
                                   base_model="tiny-random", seed=0)
    folder = tmp_path_factory.mktemp("lora")
    unet_state = get_peft_model_state_dict(base.unet, adapter_name="default")
    te_state = get_peft_model_state_dict(base.text_encoder, adapter_name="default") if with_text_encoder else None
    alphas = {**{f"unet.{key.split('.lora_')[0]}": ALPHA for key in unet_state},
              **{f"text_encoder.{key.split('.lora_')[0]}": TE_ALPHA for key in te_state or {}}}
    files = {"diffusers": save_lora_diffusers(folder, base.unet, text_encoder, "default", metadata),
             "kohya": save_lora_kohya(folder / "style_kohya.safetensors", unet_state, te_state, alphas, metadata)}
    return dict(with_text_encoder=with_text_encoder, files=files, metadata=metadata,
                images=_images(pipe), text=_text_states(pipe), plain_images=plain_images, plain_text=plain_text)


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_lora_file_reloads_exactly_with_load_lora_weights(saved_lora, tiny_base, layout):
    assert (saved_lora["images"] - saved_lora["plain_images"]).abs().max() > 1e-2  # the LoRA matters
    pipe = copy.deepcopy(tiny_base).pipeline()
    pipe.load_lora_weights(str(saved_lora["files"][layout]))
    assert (_images(pipe) - saved_lora["images"]).abs().max() < 1e-6
    text = _text_states(pipe)
    assert torch.allclose(text, saved_lora["text"], atol=1e-6, rtol=0)
    if saved_lora["with_text_encoder"]:
        assert not torch.allclose(text, saved_lora["plain_text"], atol=1e-3)


def test_diffusers_lora_without_adapter_metadata_reloads_alpha_as_rank(saved_lora, tiny_base, tmp_path):
    """Why the file carries peft's LoraConfig: without it diffusers assumes alpha = rank."""
    from lora_core.formats import load_lora_file

    stripped = tmp_path / "no_metadata.safetensors"
    save_file(load_lora_file(saved_lora["files"]["diffusers"]).state_dict, str(stripped))
    pipe = copy.deepcopy(tiny_base).pipeline()
    pipe.load_lora_weights(str(stripped))
    assert (_images(pipe) - saved_lora["images"]).abs().max() > 1e-3


def test_lora_files_keep_layout_names_alphas_and_metadata(saved_lora):
    from lora_core.formats import load_lora_file

    diffusers_file = load_lora_file(saved_lora["files"]["diffusers"])
    assert diffusers_file.path.name == "pytorch_lora_weights.safetensors" and diffusers_file.layout == "diffusers"
    assert diffusers_file.metadata.items() >= saved_lora["metadata"].items()
    configs = diffusers_file.adapter_configs
    assert (configs["unet.r"], configs["unet.lora_alpha"]) == (RANK, ALPHA)
    assert ("text_encoder.r" in configs) == saved_lora["with_text_encoder"]

    kohya_file = load_lora_file(saved_lora["files"]["kohya"])
    assert kohya_file.layout == "kohya" and kohya_file.metadata.items() >= saved_lora["metadata"].items()
    state = kohya_file.state_dict
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # what sd-scripts writes for SD v1
    assert state[f"{name}.lora_down.weight"].shape == (RANK, 64) and state[f"{name}.alpha"].item() == ALPHA
    conv = "lora_unet_up_blocks_2_resnets_1_conv1"
    assert state[f"{conv}.lora_down.weight"].shape[2:] == (3, 3) and state[f"{conv}.lora_up.weight"].shape[2:] == (1, 1)
    te_name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert (f"{te_name}.alpha" in state) == saved_lora["with_text_encoder"]
    if saved_lora["with_text_encoder"]:
        assert state[f"{te_name}.alpha"].item() == TE_ALPHA and state[f"{te_name}.lora_down.weight"].shape[0] == TE_RANK


def test_provenance_metadata_is_strings_with_lsl_and_kohya_keys():
    from lora_core.formats import provenance_metadata

    metadata = provenance_metadata(config_hash="abc123", method="lora", rank=8, alpha=4, base_model="toy:base",
                                   seed=3, base_model_version="sd_v1", resolution=32)
    assert all(isinstance(value, str) for value in metadata.values())
    assert {key: metadata[key] for key in ("lsl_config_hash", "lsl_method", "lsl_rank", "lsl_alpha", "lsl_scale",
                                           "lsl_base_model", "lsl_seed", "lsl_resolution")} == {
        "lsl_config_hash": "abc123", "lsl_method": "lora", "lsl_rank": "8", "lsl_alpha": "4.0",
        "lsl_scale": "0.5", "lsl_base_model": "toy:base", "lsl_seed": "3", "lsl_resolution": "32"}
    assert "lsl_version" in metadata
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"], metadata["ss_seed"],
            metadata["ss_base_model_version"]) == ("8", "4.0", "3", "sd_v1")
    assert "ss_network_dim" not in provenance_metadata(method="textual_inversion", seed=0)
    with pytest.raises(ValueError, match=r"scale 1\.0 != alpha / rank = 4 / 8"):
        provenance_metadata(rank=8, alpha=4, scale=1.0)


def test_check_lora_keys_counts_an_sdxl_lora_on_an_sd1_layout(tiny_base):
    from lora_core.formats import LoraKeyError, check_lora_keys

    def module(name, dim_in, dim_out, rank=4):
        return {f"{name}.lora_down.weight": torch.zeros(rank, dim_in), f"{name}.lora_up.weight": torch.zeros(dim_out, rank),
                f"{name}.alpha": torch.tensor(1.0)}

    sdxl_lora = {**module("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k", 640, 640),
                 **module("lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_v", 2048, 1280),
                 **module("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
                 **module("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280),
                 **module("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 64, 64)}
    with pytest.raises(LoraKeyError, match=r"kohya LoRA does not fit this model: 1 of 5 LoRA modules match the "
                                           r"model; 3 name no module of it and 1 have the wrong shape\.\n"
                                           r"unmatched, e\.g\. lora_unet_input_blocks_4_1_(.|\n)*"
                                           r"lora_te1_text_model_encoder_layers_0_self_attn_q_proj: LoRA 768->768, "
                                           r"module 128->128(.|\n)*LDM layout: SDXL kohya files use it"):
        check_lora_keys(sdxl_lora, tiny_base.unet, tiny_base.text_encoder)


def test_check_lora_keys_accepts_diffusers_and_peft_names(tiny_base):
    from lora_core.formats import LoraKeyError, check_lora_keys

    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # cross-attention: 128 -> 64
    peft_state = {f"{path}.lora_A.weight": torch.zeros(2, 128), f"{path}.lora_B.weight": torch.zeros(64, 2)}
    assert check_lora_keys(peft_state, tiny_base.unet).matched == [path]
    te_state = {"text_encoder.encoder.layers.1.mlp.fc2.lora_A.weight": torch.zeros(2, 512),
                "text_encoder.encoder.layers.1.mlp.fc2.lora_B.weight": torch.zeros(128, 2)}
    diffusers_state = {f"unet.{key}": value for key, value in peft_state.items()} | te_state
    assert len(check_lora_keys(diffusers_state, tiny_base.unet, tiny_base.text_encoder).matched) == 2
    with pytest.raises(LoraKeyError, match=r"1 of 2 LoRA modules match(.|\n)*no text_encoder was given"):
        check_lora_keys(diffusers_state, tiny_base.unet)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt"])
def test_lora_files_refuse_pickles(tmp_path, suffix):
    from lora_core.formats import load_lora_file, save_lora_kohya

    with pytest.raises(ValueError, match=rf"lora{suffix}: refusing a pickle LoRA file(.|\n)*arbitrary code"):
        load_lora_file(tmp_path / f"lora{suffix}")
    with pytest.raises(ValueError, match="refusing a pickle LoRA file"):
        save_lora_kohya(tmp_path / f"lora{suffix}", {})


def test_lora_saving_is_atomic_and_checks_its_inputs(tmp_path):
    from lora_core.formats import load_lora_file, save_lora_kohya

    state = {"mid_block.attentions.0.proj_in.lora_A.weight": torch.ones(2, 128, 1, 1),
             "mid_block.attentions.0.proj_in.lora_B.weight": torch.ones(128, 2, 1, 1)}
    target = tmp_path / "style.safetensors"
    with pytest.raises(TypeError, match=r"style\.safetensors: safetensors metadata values must be str"):
        save_lora_kohya(target, state, None, 2.0, {"lsl_rank": 2})
    with pytest.raises(ValueError, match=r"no alpha for unet module 'mid_block\.attentions\.0\.proj_in'"):
        save_lora_kohya(target, state, None, {"other": 1.0})
    with pytest.raises(ValueError, match=r"'mid_block\.attentions\.0\.proj_in\.lora_magnitude_vector' is not a plain"):
        save_lora_kohya(target, {**state, "mid_block.attentions.0.proj_in.lora_magnitude_vector": torch.ones(128)})
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary files left
    save_lora_kohya(target, state, None, {"mid_block.attentions.0.proj_in": 2.0})  # alphas by module path
    assert load_lora_file(target).state_dict["lora_unet_mid_block_attentions_0_proj_in.alpha"].item() == 2.0
    not_lora = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(not_lora))
    with pytest.raises(ValueError, match=r"model\.safetensors: not a LoRA in the kohya, diffusers or peft layout"):
        load_lora_file(not_lora)
