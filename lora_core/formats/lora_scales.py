"""Every LoRA module's own rank and alpha: read them from any LoRA file, and hand peft a config
that applies exactly them.

A module's update is ``(alpha / rank) * up @ down``. Where the alpha comes from depends on the layout:

* **kohya**: a ``<module>.alpha`` tensor per module (a missing one means alpha = rank, scale 1, for
  sd-scripts, A1111 and diffusers alike; alpha 0 is refused: sd-scripts reads it as scale 1, A1111
  and diffusers as scale 0);
* **diffusers**: peft's ``LoraConfig`` per component in the ``lora_adapter_metadata`` entry
  (``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``), resolved per module with peft's own
  pattern matching; without that entry diffusers' convention holds: alpha = rank;
* **peft**: the same config, from the ``adapter_config.json`` peft writes beside the weights.

diffusers 0.42's ``load_lora_weights`` gives every module of a kohya file the most common alpha:
it names the others in ``alpha_pattern`` by the old attention-processor keys
(``...attn1.processor.to_q_lora.down.weight``), which match no module, so peft only warns. Here
patterns are the module paths themselves, anchored (see :func:`peft_lora_config`).

>>> config = peft_lora_config({"mid_block.attn.to_q": (4, 1.0), "mid_block.attn.to_k": (4, 2.0),
...                            "mid_block.ff.net.2": (4, 2.0)})
>>> config.r, config.lora_alpha, config.alpha_pattern
(4, 2.0, {'^mid_block\\\\.attn\\\\.to_q': 1.0})
"""
from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from lora_core.formats.lora_files import LoraFile, check_lora_keys
from lora_core.formats.lora_keys import LoraKeyError, LoraModuleWeights, lora_modules

FACTOR_SUFFIXES = {"kohya": (".lora_down.weight", ".lora_up.weight"),
                   "diffusers": (".lora_A.weight", ".lora_B.weight"), "peft": (".lora_A.weight", ".lora_B.weight")}
ALPHA_SUFFIX = ".alpha"
PEFT_CONFIG_FILE = "adapter_config.json"  # what peft's save_pretrained writes beside adapter_model.safetensors
# LoraConfig options that change a module's update beyond (alpha / rank) * up @ down.
UNSUPPORTED_OPTIONS = ("use_rslora", "use_dora", "lora_bias")


@dataclass(frozen=True)
class LoraModule:
    """One module of a LoRA file, resolved to a layer of the model: ``delta W = (alpha / rank) up @ down``."""

    component: str        # "unet" or "text_encoder"
    path: str             # the layer's module path in that component (peft's name for it)
    down: torch.Tensor    # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor      # (out, rank) or (out, rank, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def _component_configs(lora_file: LoraFile) -> dict[str, dict]:
    """component -> peft LoraConfig dict, as the file (or peft's config beside it) gives them."""
    if lora_file.layout == "peft":
        config_path = lora_file.path.with_name(PEFT_CONFIG_FILE)
        return {"unet": json.loads(config_path.read_text())} if config_path.is_file() else {}
    configs: dict[str, dict] = {}
    for key, value in lora_file.adapter_configs.items():
        component, option = key.split(".", 1)
        configs.setdefault(component, {})[option] = value
    return configs


def _config_alpha(config: dict, module: LoraModuleWeights, rank: int, where: str) -> float:
    """The alpha peft gives ``module`` under ``config``; its rank must be the tensors' rank."""
    from peft.utils.other import get_pattern_key

    used = [option for option in UNSUPPORTED_OPTIONS if config.get(option)]
    if used:
        raise ValueError(f"{where}: its adapter config sets {', '.join(used)}, which changes the update beyond "
                         "(alpha / rank) * up @ down; such LoRAs are not loaded here")
    if "r" not in config or "lora_alpha" not in config:
        raise ValueError(f"{where}: its adapter config has no r or lora_alpha, so the module's scale is unknown")
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    config_rank = rank_pattern.get(get_pattern_key(rank_pattern, module.module_path), config["r"])
    if config_rank != rank:
        raise ValueError(f"{where}: its tensors have rank {rank} but its adapter config says rank {config_rank}")
    return float(alpha_pattern.get(get_pattern_key(alpha_pattern, module.module_path), config["lora_alpha"]))


def _module_alpha(lora_file: LoraFile, module: LoraModuleWeights, rank: int, configs: dict[str, dict]) -> float:
    where = f"{lora_file.path}: module {module.key}"
    alpha_tensor = lora_file.state_dict.get(module.key + ALPHA_SUFFIX)
    if alpha_tensor is not None:
        if alpha_tensor.numel() != 1:
            raise ValueError(f"{where}: its alpha holds {alpha_tensor.numel()} numbers, not one")
        alpha = float(alpha_tensor.item())
        if alpha == 0:
            raise ValueError(f"{where}: alpha 0 means scale 1 to sd-scripts but scale 0 to A1111 and diffusers; "
                             "set the alpha you mean (rank for scale 1)")
    elif module.component in configs:
        alpha = _config_alpha(configs[module.component], module, rank, where)
    elif lora_file.layout == "peft":
        raise ValueError(f"{where}: a peft-layout LoRA keeps its alphas in {PEFT_CONFIG_FILE} beside it, and "
                         f"there is none; without it the scale of every module is unknown")
    else:
        alpha = float(rank)  # kohya without .alpha, diffusers without adapter metadata: scale 1
    if not math.isfinite(alpha):
        raise ValueError(f"{where}: alpha {alpha} is not a finite number")
    return alpha


def read_lora_modules(lora_file: LoraFile, unet, text_encoder=None) -> dict[str, LoraModule]:
    """Every module of ``lora_file`` resolved to a layer of ``unet``/``text_encoder``, with its own
    alpha, keyed ``"unet.<module path>"`` / ``"text_encoder.<module path>"``.

    Raises (naming the file and the module) for modules that fit no layer, tensors that are not
    LoRA down/up/alpha tensors (they would be dropped), or a scale that cannot be known.
    """
    try:
        report = check_lora_keys(lora_file.state_dict, unet, text_encoder)
    except LoraKeyError as error:
        raise LoraKeyError(f"{lora_file.path}: {error}") from None
    down_suffix, up_suffix = FACTOR_SUFFIXES[lora_file.layout]
    configs, used, modules = _component_configs(lora_file), set(), {}
    for module in lora_modules(lora_file.state_dict, lora_file.layout):
        component, path = report.resolved[module.key]
        down, up = lora_file.state_dict[module.key + down_suffix], lora_file.state_dict[module.key + up_suffix]
        alpha = _module_alpha(lora_file, module, down.shape[0], configs)
        if f"{component}.{path}" in modules:
            raise ValueError(f"{lora_file.path}: two modules of the file name the layer {component}.{path}, the "
                             f"second is {module.key}")
        modules[f"{component}.{path}"] = LoraModule(component, path, down, up, alpha)
        used.update(module.key + suffix for suffix in (down_suffix, up_suffix, ALPHA_SUFFIX))
    unused = sorted(set(lora_file.state_dict) - used)
    if unused:
        raise ValueError(f"{lora_file.path}: {len(unused)} tensors are not LoRA down/up/alpha tensors and would be "
                         f"dropped, e.g. {unused[:3]} (DoRA magnitudes, LoRA biases and LyCORIS factors are not "
                         "loaded here)")
    return dict(sorted(modules.items()))


def peft_lora_config(modules: Mapping[str, tuple[int, float]]):
    """A peft ``LoraConfig`` giving every module path its own ``(rank, alpha)``.

    ``r`` and ``lora_alpha`` are the most common values; the other modules go into ``rank_pattern``
    / ``alpha_pattern``. peft matches a pattern key ``k`` to a module path ``p`` by
    ``re.match(rf"(.*\\.)?({k})$", p)`` and takes the first key that matches, so a bare path would also
    match every longer path ending in it; ``"^" + re.escape(path)`` matches that path only.
    """
    from peft import LoraConfig

    ordered = sorted(modules.items())
    rank = collections.Counter(rank for _, (rank, _) in ordered).most_common(1)[0][0]
    alpha = collections.Counter(alpha for _, (_, alpha) in ordered).most_common(1)[0][0]
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=[path for path, _ in ordered],
                      rank_pattern={"^" + re.escape(path): r for path, (r, _) in ordered if r != rank},
                      alpha_pattern={"^" + re.escape(path): a for path, (_, a) in ordered if a != alpha})
