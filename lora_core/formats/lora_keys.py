"""LoRA key names across layouts, and whether a LoRA file fits a model.

Three layouts name the same LoRA module ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``:

* **peft** (``get_peft_model_state_dict``, ``adapter_model.safetensors``):
  ``down_blocks...attn1.to_q.lora_A.weight`` / ``lora_B``,
* **diffusers** (``save_lora_weights``, ``pytorch_lora_weights.safetensors``): the peft names
  behind ``unet.`` or ``text_encoder.``,
* **kohya** (sd-scripts ``networks/lora.py``, A1111): ``lora_unet_`` + the module path with ``_``
  for ``.``, then ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``. For SD v1 sd-scripts
  trains a UNet that keeps diffusers' module names, so its files say ``down_blocks_0_...``
  (SDXL files say ``input_blocks_4_1_...``, the LDM names). The text encoder is
  ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``.

>>> kohya_module_name("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0")
'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0'
>>> kohya_module_name("text_encoder", "encoder.layers.3.mlp.fc1")
'lora_te_text_model_encoder_layers_3_mlp_fc1'
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te"}
# kohya names of text encoders a model may lack (SDXL's second one): never a match on SD v1.
_KOHYA_COMPONENTS = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                     "lora_te2_": "text_encoder_2"}
PEFT_PREFIX = "base_model.model."


class LoraKeyError(ValueError):
    """A LoRA file whose modules do not fit the model it is applied to."""


def kohya_module_name(component: str, module_path: str) -> str:
    """The kohya/A1111 name of a UNet or text-encoder module (diffusers/peft module path)."""
    if component == "text_encoder" and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path  # transformers >= 5.6 flattened CLIPTextModel
    return f"{KOHYA_PREFIXES[component]}_{module_path.replace('.', '_')}"


@dataclass(frozen=True)
class LoraModuleWeights:
    """One LoRA module as a file names it: which model part, which module, the down/up shapes."""

    key: str                 # the module's name in the file
    component: str           # "unet", "text_encoder" or another part the file names
    module_path: str | None  # peft/diffusers module path; None for kohya names (resolved by name)
    down_shape: tuple[int, ...]
    up_shape: tuple[int, ...]


def lora_modules(state_dict: dict[str, torch.Tensor], layout: str) -> list[LoraModuleWeights]:
    """The LoRA modules of a state dict in ``layout`` ("kohya", "diffusers" or "peft")."""
    modules = []
    for key, down in state_dict.items():
        if layout == "kohya" and key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            component = next((c for p, c in _KOHYA_COMPONENTS.items() if name.startswith(p)), "unknown")
            up = state_dict.get(f"{name}.lora_up.weight")
            modules.append(LoraModuleWeights(name, component, None, tuple(down.shape), _shape(up)))
        elif layout in ("diffusers", "peft") and key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            up = state_dict.get(f"{name}.lora_B.weight")
            component, path = ("unet", name.removeprefix(PEFT_PREFIX)) if layout == "peft" else name.split(".", 1)
            modules.append(LoraModuleWeights(name, component, path, tuple(down.shape), _shape(up)))
    return modules


def _shape(tensor) -> tuple[int, ...]:
    return tuple(tensor.shape) if tensor is not None else ()


def adaptable_modules(model, component: str) -> dict[str, tuple[str, torch.nn.Module]]:
    """Name a file may use -> (module path in ``model``, Linear/Conv2d layer; the base layer where
    peft already wrapped it)."""
    layers = {}
    for path, module in model.named_modules():
        if ".lora_" in path or path.endswith(".base_layer") or ".base_layer." in path:
            continue
        layer = getattr(module, "base_layer", module)
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            layers[path] = (path, layer)
            if component == "text_encoder" and not path.startswith("text_model."):
                layers["text_model." + path] = (path, layer)  # the path older transformers and kohya use
    return layers


@dataclass
class KeyMatchReport:
    """How the LoRA modules of a file match a model's modules."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)       # name no module of the model
    wrong_shape: list[str] = field(default_factory=list)   # "key: LoRA in->out vs module in->out"
    resolved: dict[str, tuple[str, str]] = field(default_factory=dict)  # matched key -> (component, path)

    @property
    def ok(self) -> bool:
        return bool(self.matched) and not self.missing and not self.wrong_shape

    def summary(self, examples: int = 3) -> str:
        total = len(self.matched) + len(self.missing) + len(self.wrong_shape)
        lines = [f"{len(self.matched)} of {total} LoRA modules match the model; {len(self.missing)} name "
                 f"no module of it and {len(self.wrong_shape)} have the wrong shape."]
        if self.missing:
            lines.append(f"unmatched, e.g. {', '.join(self.missing[:examples])}")
        if self.wrong_shape:
            lines.append(f"wrong shape, e.g. {'; '.join(self.wrong_shape[:examples])}")
        return "\n".join(lines)


def _layer_dims(layer) -> tuple[int, int]:
    if isinstance(layer, torch.nn.Conv2d):
        return layer.in_channels, layer.out_channels
    return layer.in_features, layer.out_features


def match_lora_modules(modules: list[LoraModuleWeights], unet, text_encoder=None) -> KeyMatchReport:
    """Match LoRA modules to the layers of ``unet`` and ``text_encoder`` by name and shape."""
    by_component = {"unet": adaptable_modules(unet, "unet")}
    if text_encoder is not None:
        by_component["text_encoder"] = adaptable_modules(text_encoder, "text_encoder")
    kohya_layers = {kohya_module_name(component, name): (component, *target)
                    for component, layers in by_component.items() for name, target in layers.items()}
    report = KeyMatchReport()
    for module in modules:
        if module.module_path is None:  # diffusers reads lora_te1_ (SDXL's first encoder) as lora_te_
            found = kohya_layers.get(module.key.replace("lora_te1_", "lora_te_", 1))
        else:
            target = by_component.get(module.component, {}).get(module.module_path)
            found = (module.component, *target) if target else None
        if found is None:
            report.missing.append(module.key)
            continue
        component, path, layer = found
        expected_in, expected_out = _layer_dims(layer)
        lora_in, lora_out = module.down_shape[1], (module.up_shape[0] if module.up_shape else None)
        if (lora_in, lora_out) != (expected_in, expected_out):
            report.wrong_shape.append(f"{module.key}: LoRA {lora_in}->{lora_out}, module "
                                      f"{expected_in}->{expected_out}")
        else:
            report.matched.append(module.key)
            report.resolved[module.key] = (component, path)
    return report
