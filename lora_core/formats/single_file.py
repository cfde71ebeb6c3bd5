"""Save a base model as one A1111/LDM-layout ``.safetensors`` file, the layout model sites ship.

The key mapping is the inverse of diffusers' ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint`` and ``convert_ldm_clip_checkpoint``
(``diffusers/loaders/single_file_utils.py``). It is derived from the modules the model
actually has (how many blocks, layers per block, which blocks carry attention or a
down/upsampler), so it holds for SD v1.5 and for the tiny models alike. Every tensor must
find a place in the LDM layout: a module the layout cannot express is an error, never a
silently dropped weight.

>>> import tempfile, pathlib
>>> from lora_core.models import build_tiny_random
>>> path = save_single_file(build_tiny_random(seed=0), pathlib.Path(tempfile.mkdtemp()) / "tiny.safetensors")
>>> from safetensors import safe_open
>>> with safe_open(path, "pt") as f:
...     sorted({key.split(".")[0] for key in f.keys()})
['cond_stage_model', 'first_stage_model', 'model']
"""
from __future__ import annotations

from pathlib import Path

import torch

from lora_core.formats.safetensors_file import save_safetensors

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."

# Inside a block, LDM renames some layers. diffusers' ResnetBlock2D -> LDM ResBlock (UNet).
_UNET_RESNET_RENAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                        "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                        "conv_shortcut": "skip_connection"}
# The VAE's ResnetBlock keeps diffusers' names except the shortcut.
_VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}
# The VAE's mid-block attention: separate q/k/v/proj_out as 1x1 convolutions in LDM.
_VAE_ATTENTION_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_ATTENTION_CONV_WEIGHTS = ("q.weight", "k.weight", "v.weight", "proj_out.weight")


def unet_module_map(unet) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers module path -> (LDM module path, renames inside it), for a ``UNet2DConditionModel``.

    LDM numbers the UNet as flat ``input_blocks`` (conv_in, then per down block its layers and
    its downsampler), ``middle_block`` (resnet, attention, resnet) and ``output_blocks`` (per up
    block ``layers_per_block + 1`` layers, the upsampler sharing the last one).

    >>> from lora_core.models import build_tiny_random
    >>> modules = unet_module_map(build_tiny_random().unet)
    >>> modules["down_blocks.1.attentions.0"][0], modules["up_blocks.0.upsamplers.0.conv"][0]
    ('input_blocks.4.1', 'output_blocks.2.1.conv')
    """
    modules: dict[str, tuple[str, dict[str, str]]] = {
        "conv_in": ("input_blocks.0.0", {}), "time_embedding.linear_1": ("time_embed.0", {}),
        "time_embedding.linear_2": ("time_embed.2", {}), "conv_norm_out": ("out.0", {}),
        "conv_out": ("out.2", {})}
    input_index = 1
    for block_index, block in enumerate(unet.down_blocks):
        for layer_index, _ in enumerate(block.resnets):
            modules[f"down_blocks.{block_index}.resnets.{layer_index}"] = (
                f"input_blocks.{input_index}.0", _UNET_RESNET_RENAMES)
            if getattr(block, "attentions", None) is not None:
                modules[f"down_blocks.{block_index}.attentions.{layer_index}"] = (f"input_blocks.{input_index}.1", {})
            input_index += 1
        if block.downsamplers is not None:
            modules[f"down_blocks.{block_index}.downsamplers.0.conv"] = (f"input_blocks.{input_index}.0.op", {})
            input_index += 1
    mid = unet.mid_block
    if mid is not None:
        modules["mid_block.resnets.0"] = ("middle_block.0", _UNET_RESNET_RENAMES)
        modules["mid_block.attentions.0"] = ("middle_block.1", {})
        modules["mid_block.resnets.1"] = ("middle_block.2", _UNET_RESNET_RENAMES)
    output_index = 0
    for block_index, block in enumerate(unet.up_blocks):
        has_attention = getattr(block, "attentions", None) is not None
        for layer_index, _ in enumerate(block.resnets):
            modules[f"up_blocks.{block_index}.resnets.{layer_index}"] = (
                f"output_blocks.{output_index}.0", _UNET_RESNET_RENAMES)
            if has_attention:
                modules[f"up_blocks.{block_index}.attentions.{layer_index}"] = (f"output_blocks.{output_index}.1", {})
            output_index += 1
        if block.upsamplers is not None:
            slot = 2 if has_attention else 1
            modules[f"up_blocks.{block_index}.upsamplers.0.conv"] = (f"output_blocks.{output_index - 1}.{slot}.conv", {})
    return modules


def vae_module_map(vae) -> dict[str, tuple[str, dict[str, str]]]:
    """diffusers module path -> (LDM module path, renames inside it), for an ``AutoencoderKL``.

    LDM numbers the decoder's up blocks from the lowest resolution: diffusers'
    ``decoder.up_blocks.0`` is LDM's ``decoder.up.<n-1>``.
    """
    modules: dict[str, tuple[str, dict[str, str]]] = {
        "quant_conv": ("quant_conv", {}), "post_quant_conv": ("post_quant_conv", {})}
    for part in ("encoder", "decoder"):
        modules[f"{part}.conv_in"] = (f"{part}.conv_in", {})
        modules[f"{part}.conv_out"] = (f"{part}.conv_out", {})
        modules[f"{part}.conv_norm_out"] = (f"{part}.norm_out", {})
        modules[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", _VAE_RESNET_RENAMES)
        modules[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", _VAE_RESNET_RENAMES)
        modules[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTENTION_RENAMES)
    for block_index, block in enumerate(vae.encoder.down_blocks):
        for layer_index, _ in enumerate(block.resnets):
            modules[f"encoder.down_blocks.{block_index}.resnets.{layer_index}"] = (
                f"encoder.down.{block_index}.block.{layer_index}", _VAE_RESNET_RENAMES)
        if block.downsamplers is not None:
            modules[f"encoder.down_blocks.{block_index}.downsamplers.0.conv"] = (
                f"encoder.down.{block_index}.downsample.conv", {})
    up_blocks = vae.decoder.up_blocks
    for block_index, block in enumerate(up_blocks):
        ldm_index = len(up_blocks) - 1 - block_index
        for layer_index, _ in enumerate(block.resnets):
            modules[f"decoder.up_blocks.{block_index}.resnets.{layer_index}"] = (
                f"decoder.up.{ldm_index}.block.{layer_index}", _VAE_RESNET_RENAMES)
        if block.upsamplers is not None:
            modules[f"decoder.up_blocks.{block_index}.upsamplers.0.conv"] = (f"decoder.up.{ldm_index}.upsample.conv", {})
    return modules


def map_key(key: str, modules: dict[str, tuple[str, dict[str, str]]], component: str) -> str:
    """Rename one diffusers state-dict key by the longest module prefix in ``modules``.

    >>> map_key("mid_block.resnets.1.norm1.weight", {"mid_block.resnets.1": ("middle_block.2", {"norm1": "in_layers.0"})}, "unet")
    'middle_block.2.in_layers.0.weight'
    """
    parts = key.split(".")
    for length in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in modules:
            ldm_prefix, renames = modules[prefix]
            return f"{ldm_prefix}.{_rename_inner('.'.join(parts[length:]), renames)}"
    raise ValueError(f"{component}: parameter {key!r} has no place in the LDM single-file layout "
                     "(this architecture is not SD v1-like)")


def _rename_inner(rest: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    modules = unet_module_map(unet)
    return {LDM_UNET_PREFIX + map_key(key, modules, "unet"): value
            for key, value in unet.state_dict().items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    modules = vae_module_map(vae)
    converted = {}
    for key, value in vae.state_dict().items():
        ldm_key = map_key(key, modules, "vae")
        if ldm_key.endswith(_VAE_ATTENTION_CONV_WEIGHTS) and ".mid.attn_1." in ldm_key and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        converted[LDM_VAE_PREFIX + ldm_key] = value
    return converted


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); LDM keeps it.
    return {LDM_TEXT_ENCODER_PREFIX + (key if key.startswith("text_model.") else "text_model." + key): value
            for key, value in text_encoder.state_dict().items()}


def base_to_ldm(base) -> dict[str, torch.Tensor]:
    """All three components of a ``BaseModel`` as one LDM-layout state dict."""
    state_dict = {**unet_to_ldm(base.unet), **vae_to_ldm(base.vae), **text_encoder_to_ldm(base.text_encoder)}
    return {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}


def save_single_file(base, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``base`` as one A1111/LDM-layout ``.safetensors`` file, atomically.

    Load it back with ``load_base(path, config=<diffusers folder of the same architecture>)``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a single-file checkpoint must be written as .safetensors")
    return save_safetensors(path, base_to_ldm(base), {"format": "pt", **(metadata or {})})


class SingleFileKeyError(ValueError):
    """A single-file checkpoint's tensors do not fit the architecture it is loaded with."""


def expected_single_file_shapes(config: str | Path) -> dict[str, tuple[int, ...]]:
    """LDM key -> shape that a checkpoint of the architecture in ``config`` (diffusers folder) holds.

    The components are built on the meta device, so this costs no memory or time.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(config), subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config), subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config), subfolder="text_encoder"))
    state_dict = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def check_single_file(path: str | Path, config: str | Path, examples: int = 3) -> None:
    """Raise ``SingleFileKeyError`` unless ``path`` holds every tensor ``config``'s architecture needs.

    Extra tensors (EMA weights, ``alphas_cumprod``, ``position_ids``) are allowed: real
    checkpoints carry them and loaders ignore them.
    """
    from lora_core.io import open_safetensors

    expected = expected_single_file_shapes(config)
    with open_safetensors(path) as checkpoint:
        found = {key: tuple(checkpoint.get_slice(key).get_shape()) for key in checkpoint.keys()}
    missing = [key for key in expected if key not in found]
    wrong_shape = [f"{key} {found[key]} (expected {expected[key]})"
                   for key in expected if key in found and found[key] != expected[key]]
    if not missing and not wrong_shape:
        return
    present = len(expected) - len(missing) - len(wrong_shape)
    lines = [f"{path}: does not fit the architecture in {config}: {present} of {len(expected)} expected "
             f"tensors fit, {len(missing)} missing, {len(wrong_shape)} with the wrong shape."]
    if missing:
        lines.append(f"missing, e.g. {', '.join(missing[:examples])}")
    if wrong_shape:
        lines.append(f"wrong shape, e.g. {'; '.join(wrong_shape[:examples])}")
    lines.append("Pass config= a diffusers folder of the same architecture (an SD v1 checkpoint needs an "
                 "SD v1 config) and check that the file is a full model, not a LoRA or a VAE alone.")
    raise SingleFileKeyError("\n".join(lines))
