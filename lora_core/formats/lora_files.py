"""LoRA files: save peft LoRAs for diffusers and for kohya/A1111, read any of them back, and
say in the file what it is.

Both files reload exactly with ``blend.load_lora``, also when alpha != rank and when modules
differ in rank or alpha: the diffusers file carries peft's ``LoraConfig`` in its
``lora_adapter_metadata`` (without it diffusers silently assumes alpha = rank), the kohya file an
``.alpha`` per module. diffusers' own ``load_lora_weights`` reloads the diffusers file exactly, and
the kohya file only when all its alphas are equal (it gives every module the most common one; see
``formats.lora_scales``).

>>> metadata = provenance_metadata(method="lora", rank=8, alpha=4, seed=0, base_model="toy:base")
>>> metadata["lsl_scale"], metadata["ss_network_dim"], metadata["ss_network_alpha"]
('0.5', '8', '4.0')
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_core.formats.lora_keys import (PEFT_PREFIX, KeyMatchReport, LoraKeyError, kohya_module_name,
                                         lora_modules, match_lora_modules)
from lora_core.formats.safetensors_file import save_safetensors

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what load_lora_weights looks for in a folder
ADAPTER_METADATA_KEY = "lora_adapter_metadata"               # diffusers' LORA_ADAPTER_METADATA_KEY
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
LAYOUTS = ("kohya", "diffusers", "peft")


def provenance_metadata(*, config_hash: str | None = None, method: str | None = None, rank: int | None = None,
                        alpha: float | None = None, scale: float | None = None, base_model: str | None = None,
                        seed: int | None = None, version: str | None = None,
                        base_model_version: str | None = None, **extra) -> dict[str, str]:
    """safetensors metadata saying what a weights file is: ``lsl_*`` keys and kohya's ``ss_*`` keys.

    ``scale`` defaults to ``alpha / rank`` and must equal it when given. ``base_model_version`` is
    kohya's vocabulary (``sd_v1``, ``sdxl_base_v1-0``); leave it out for the toy models. Further
    keyword fields become ``lsl_<name>`` (JSON for non-strings).
    """
    from lora_core import __version__

    if rank is not None and alpha is not None:
        derived = float(alpha) / rank
        if scale is not None and abs(float(scale) - derived) > 1e-9:
            raise ValueError(f"provenance_metadata: scale {scale} != alpha / rank = {alpha} / {rank}")
        scale = derived
    fields = {"config_hash": config_hash, "method": method, "rank": rank,
              "alpha": None if alpha is None else float(alpha), "scale": scale, "base_model": base_model,
              "seed": seed, "version": version or __version__, **extra}
    metadata = {f"lsl_{name}": value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                for name, value in fields.items() if value is not None}
    kohya = {"ss_network_dim": rank, "ss_network_alpha": None if alpha is None else float(alpha), "ss_seed": seed,
             "ss_base_model_version": base_model_version, "ss_sd_model_name": base_model,
             "ss_network_module": "networks.lora" if method == "lora" else None}
    metadata.update({name: str(value) for name, value in kohya.items() if value is not None})
    return metadata


def _peft_pairs(state_dict: dict[str, torch.Tensor], what: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (lora_A, lora_B) of a peft LoRA state dict; other tensors are an error."""
    pairs = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix(PEFT_PREFIX)
        if not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"{what}: {key!r} is not a plain LoRA tensor (lora_A/lora_B weight); DoRA, "
                             "LoRA biases and embedding LoRAs have no kohya equivalent here")
        module, matrix = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        pairs.setdefault(module, {})[matrix] = tensor
    incomplete = [module for module, matrices in pairs.items() if len(matrices) != 2]
    if incomplete:
        raise ValueError(f"{what}: modules without both lora_A and lora_B, e.g. {incomplete[:3]}")
    return {module: (matrices["lora_A"], matrices["lora_B"]) for module, matrices in pairs.items()}


def _alpha_for(alphas: float | dict[str, float], component: str, module: str) -> float:
    if isinstance(alphas, (int, float)):
        return float(alphas)
    for name in (f"{component}.{module}", module):
        if name in alphas:
            return float(alphas[name])
    raise ValueError(f"save_lora_kohya: no alpha for {component} module {module!r}; pass alphas as one "
                     "number or a dict keyed by module path")


def kohya_state_dict(unet_lora_state_dict: dict, text_encoder_lora_state_dict: dict | None,
                     alphas: float | dict[str, float]) -> dict[str, torch.Tensor]:
    """peft LoRA state dicts -> kohya keys ``lora_unet_*.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``."""
    converted = {}
    for component, state_dict in (("unet", unet_lora_state_dict), ("text_encoder", text_encoder_lora_state_dict)):
        for module, (down, up) in _peft_pairs(state_dict or {}, component).items():
            name = kohya_module_name(component, module)
            converted[f"{name}.lora_down.weight"] = down
            converted[f"{name}.lora_up.weight"] = up
            converted[f"{name}.alpha"] = torch.tensor(_alpha_for(alphas, component, module))
    if not converted:
        raise ValueError("save_lora_kohya: both LoRA state dicts are empty")
    return converted


def _write_safetensors(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    return save_safetensors(path, state_dict, {"format": "pt", **metadata})


def save_lora_kohya(path: str | Path, unet_lora_state_dict: dict, text_encoder_lora_state_dict: dict | None = None,
                    alphas: float | dict[str, float] = 1.0, metadata: dict[str, str] | None = None) -> Path:
    """Write a kohya/A1111 LoRA file from peft state dicts (``get_peft_model_state_dict``), atomically.

    ``alphas`` is one alpha for every module or a dict keyed by module path (optionally
    ``unet.``/``text_encoder.``-prefixed); kohya's scale is ``alpha / rank`` as in peft.
    """
    path = _safetensors_path(path)
    return _write_safetensors(path, kohya_state_dict(unet_lora_state_dict, text_encoder_lora_state_dict, alphas),
                              metadata or {})


def _adapter_config_dict(model, adapter_name: str, component: str) -> dict:
    config = model.peft_config[adapter_name].to_dict()
    return {f"{component}.{key}": sorted(value) if isinstance(value, set) else value for key, value in config.items()}


def save_lora_diffusers(path_or_dir: str | Path, unet, text_encoder=None, adapter_name: str = "default",
                        metadata: dict[str, str] | None = None) -> Path:
    """Write the peft adapter ``adapter_name`` of ``unet`` (and ``text_encoder``) as diffusers'
    ``save_lora_weights`` does, with the adapter configs and ``metadata``, atomically.

    A path without ``.safetensors`` is a folder: the file is ``<folder>/pytorch_lora_weights.safetensors``.
    """
    from peft import get_peft_model_state_dict

    path = Path(path_or_dir)
    if path.suffix != ".safetensors":
        path = path / DIFFUSERS_WEIGHT_NAME
    path = _safetensors_path(path)
    state_dict, adapter_configs = {}, {}
    for component, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is None:
            continue
        if adapter_name not in getattr(model, "peft_config", {}):
            raise ValueError(f"save_lora_diffusers: the {component} has no LoRA adapter {adapter_name!r}")
        lora_state = get_peft_model_state_dict(model, adapter_name=adapter_name)
        state_dict.update({f"{component}.{key}": value for key, value in lora_state.items()})
        adapter_configs.update(_adapter_config_dict(model, adapter_name, component))
    file_metadata = {ADAPTER_METADATA_KEY: json.dumps(adapter_configs, indent=2, sort_keys=True), **(metadata or {})}
    return _write_safetensors(path, state_dict, file_metadata)


@dataclass
class LoraFile:
    """A LoRA file read back: its tensors, its metadata and which layout it uses."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]
    layout: str  # "kohya", "diffusers" or "peft"

    @property
    def adapter_configs(self) -> dict:
        """diffusers' per-component peft ``LoraConfig`` dicts (``{}`` when the file has none)."""
        return json.loads(self.metadata.get(ADAPTER_METADATA_KEY, "{}"))


def _safetensors_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: refusing a pickle LoRA file ({path.suffix}); unpickling can run arbitrary "
                         "code. Use the .safetensors variant, or convert it once in a sandbox you trust: "
                         "`safetensors.torch.save_file(torch.load(p, weights_only=True), out)`")
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: LoRA files are read and written as .safetensors only")
    return path


def detect_layout(keys: list[str], path: str | Path = "state dict") -> str:
    """Which layout a LoRA state dict uses, from its key names."""
    if keys and all(key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for key in keys):
        return "kohya"
    if keys and all(key.startswith(("unet.", "text_encoder.")) for key in keys):
        return "diffusers"
    if keys and all(".lora_A." in key or ".lora_B." in key for key in keys):
        return "peft"
    raise ValueError(f"{path}: not a LoRA in the kohya, diffusers or peft layout; keys e.g. {sorted(keys)[:3]}")


def load_lora_file(path: str | Path) -> LoraFile:
    """Read a LoRA ``.safetensors`` file (pickles refused) with its metadata and layout."""
    from lora_core.io import read_safetensors

    path = _safetensors_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LoRA file")
    state_dict, metadata = read_safetensors(path)
    return LoraFile(path, state_dict, metadata, detect_layout(list(state_dict), path))


def check_lora_keys(state_dict: dict[str, torch.Tensor], unet, text_encoder=None) -> KeyMatchReport:
    """Match every LoRA module of ``state_dict`` (any layout) to a layer of ``unet``/``text_encoder``.

    Raises ``LoraKeyError`` with the counts and examples when any module names no layer or has
    the wrong shape (e.g. an SDXL LoRA on an SD v1 model); returns the report otherwise.
    """
    layout = detect_layout(list(state_dict))
    report = match_lora_modules(lora_modules(state_dict, layout), unet, text_encoder)
    if not report.ok:
        names_text_encoder = any(key.startswith(("text_encoder.", "lora_te")) for key in report.missing)
        hint = ("\n(no text_encoder was given to match the text-encoder modules against)"
                if text_encoder is None and names_text_encoder else "")
        if any(block in key for key in report.missing for block in ("input_blocks", "output_blocks", "middle_block")):
            hint += ("\n(input_blocks/output_blocks names are the LDM layout: SDXL kohya files use it; diffusers "
                     "maps it for an SD v1 UNet only with load_lora_weights(..., unet_config=pipe.unet.config))")
        raise LoraKeyError(f"{layout} LoRA does not fit this model: {report.summary()}{hint}")
    return report
