"""Stable Diffusion v1.5's published architecture and hub layout, without its weights.

The dictionaries below are the configs of ``stable-diffusion-v1-5/stable-diffusion-v1-5`` on the
hub (``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``,
``scheduler/scheduler_config.json``, ``feature_extractor/preprocessor_config.json`` and
``model_index.json``), copied key for key. They serve three purposes:

* models of the real size with **random weights** for the GPU benchmarks (no hub there), always
  labelled ``random_weights`` (valid for speed and memory, never for quality);
* parameter counts and activation traces for the memory plans (:mod:`lora_core.gpu`);
* the hub layout a tiny model is saved in (:func:`save_hub_layout`), so that the ``sd15``
  profile's load path (``lora_core.models.load_base``) runs in the tests on the files it meets on
  the hub, and the only untested step on a real platform is the download.

>>> counts = parameter_counts()
>>> [round(counts[part] / 1e6, 2) for part in ("unet", "text_encoder", "vae")]
[859.52, 123.06, 83.65]
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from lora_core.models import SD15_HUB_ID as HUB_ID

RESOLUTION = 512

# unet/config.json (the keys that differ from diffusers' defaults are the architecture; the rest is
# written out as the hub file has it, so a saved tiny model has the same keys)
UNET = {
    "act_fn": "silu", "addition_embed_type": None, "addition_embed_type_num_heads": 64,
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_dim": 768, "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
    "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default", "sample_size": 64, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
    "timestep_post_act": None,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": None, "use_linear_projection": False,
}
VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
    "vocab_size": 49408,
}
SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "thresholding": False,
    "trained_betas": None,
}
FEATURE_EXTRACTOR = {
    "crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_resize": True,
    "image_processor_type": "CLIPImageProcessor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "feature_extractor": ["transformers", "CLIPFeatureExtractor"],
    "requires_safety_checker": True, "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_SPECIAL = {"content": "", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TOKENIZER_CONFIG = {
    "add_prefix_space": False, "bos_token": {"__type": "AddedToken", **_SPECIAL, "content": BOS},
    "do_lower_case": True, "eos_token": {"__type": "AddedToken", **_SPECIAL, "content": EOS}, "errors": "replace",
    "model_max_length": 77, "pad_token": EOS, "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer", "unk_token": {"__type": "AddedToken", **_SPECIAL, "content": EOS},
}
SPECIAL_TOKENS_MAP = {"bos_token": {**_SPECIAL, "content": BOS}, "eos_token": {**_SPECIAL, "content": EOS},
                      "pad_token": EOS, "unk_token": {**_SPECIAL, "content": EOS}}
# What the hub repository holds (the weights as safetensors) for the files our loader reads.
HUB_FILES = ("model_index.json", "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
             "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/merges.txt",
             "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model.safetensors")


def build_components(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder) of SD v1.5's architecture with random weights (no weights at all
    on the ``meta`` device: a parameter count or an activation trace costs no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = {k: v for k, v in TEXT_ENCODER.items() if k not in ("architectures", "torch_dtype")}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in dtype: a later .to(dtype) makes diffusers warn
    try:
        with torch.device(device):
            return (UNet2DConditionModel.from_config(UNET), AutoencoderKL.from_config(VAE),
                    CLIPTextModel(CLIPTextConfig(**text_config)))
    finally:
        torch.set_default_dtype(previous)


@functools.lru_cache(maxsize=1)
def parameter_counts() -> dict[str, int]:
    """Parameters of SD v1.5's UNet, text encoder and VAE (counted on the meta device)."""
    unet, vae, text_encoder = build_components("meta")
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in (("unet", unet), ("text_encoder", text_encoder), ("vae", vae))}


def build_random(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A ``BaseModel`` of SD v1.5's published architecture with seeded random weights, for speed and
    memory measurements only (``random_weights=True``; its images are noise). The tokenizer is a
    small CLIP BPE trained here (SD's vocabulary comes from the hub); its ids fit the 49408-entry
    embedding, and a step's cost does not depend on which tokens a caption has."""
    from diffusers import DDPMScheduler

    from lora_core.models import SD_SCHEDULER, BaseModel, build_tiny_random

    tokenizer = build_tiny_random(seed).tokenizer
    torch.manual_seed(seed)
    unet, vae, text_encoder = build_components(device, dtype)
    return BaseModel(tokenizer, text_encoder.eval(), vae.eval(), unet.eval(), DDPMScheduler(**SD_SCHEDULER),
                     source=f"{HUB_ID} architecture, random weights", random_weights=True)


def save_hub_layout(base, folder: str | Path) -> Path:
    """Save ``base`` as SD v1.5's hub repository lays it out: the diffusers folder that
    ``BaseModel.save`` writes, with SD v1.5's own ``model_index.json`` (a safety checker and a
    ``CLIPFeatureExtractor`` declared, a PNDM scheduler), ``scheduler_config.json`` and
    ``feature_extractor/preprocessor_config.json``, and its tokenizer files (``vocab.json``,
    ``merges.txt`` and the old ``AddedToken`` configs, no ``tokenizer.json``); every key of SD
    v1.5's component configs is in this model's (``dropout`` of the text encoder, which
    transformers 5 no longer writes, keeps SD v1.5's value). The safety checker's weights are not written:
    ``load_base`` never loads them."""
    import os
    import shutil

    folder = Path(folder)
    staging = base.save(folder.parent / f".{folder.name}.partial")
    index = json.loads((staging / "model_index.json").read_text())
    version = {"_diffusers_version": index.get("_diffusers_version", "")}
    _write_slow_tokenizer_files(base.tokenizer, staging / "tokenizer")
    files = {"model_index.json": {**MODEL_INDEX, **version},
             "tokenizer/tokenizer_config.json": TOKENIZER_CONFIG,
             "tokenizer/special_tokens_map.json": SPECIAL_TOKENS_MAP,
             "scheduler/scheduler_config.json": {**SCHEDULER, **version},
             "feature_extractor/preprocessor_config.json": FEATURE_EXTRACTOR}
    for name, published in (("unet", UNET), ("vae", VAE), ("text_encoder", TEXT_ENCODER)):
        config = json.loads((staging / name / "config.json").read_text())
        files[f"{name}/config.json"] = {**published, **config}  # SD v1.5's keys, this model's values
    for name, content in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)   # complete or absent, never half-written
    return folder


def _write_slow_tokenizer_files(tokenizer, folder: Path) -> None:
    """``vocab.json`` and ``merges.txt`` of a CLIP BPE tokenizer in place of ``tokenizer.json``."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
