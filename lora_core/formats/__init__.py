"""Weight-file formats: A1111/LDM single-file checkpoints and LoRA files (diffusers, kohya, peft).

* :func:`save_single_file` writes a base model as the one-file checkpoint model sites ship;
  ``load_base(path, config=<diffusers folder>)`` reads it back.
* :func:`save_lora_diffusers` and :func:`save_lora_kohya` write LoRA files that ``blend.load_lora``
  (and A1111, for kohya; diffusers' ``load_lora_weights`` unless a kohya file's alphas differ) load exactly;
  :func:`provenance_metadata` says inside each file what it is.
* :func:`load_lora_file` reads any of them (pickles refused), :func:`check_lora_keys` says
  whether a LoRA fits a model before anything is applied, :func:`read_lora_modules` resolves every
  module to a layer with its own alpha, and :func:`peft_lora_config` gives peft exactly those.
* :func:`save_safetensors` writes every export of the project: equal content gives bit-identical
  files; :func:`content_digest` keys caches on tensors and metadata, not on a writer's header order.
"""
from lora_core.formats.lora_files import (LoraFile, check_lora_keys, detect_layout, kohya_state_dict,
                                          load_lora_file, provenance_metadata, save_lora_diffusers,
                                          save_lora_kohya)
from lora_core.formats.lora_keys import KeyMatchReport, LoraKeyError, kohya_module_name
from lora_core.formats.lora_scales import LoraModule, peft_lora_config, read_lora_modules
from lora_core.formats.safetensors_file import content_digest, save_safetensors
from lora_core.formats.single_file import SingleFileKeyError, check_single_file, save_single_file

__all__ = ["KeyMatchReport", "LoraFile", "LoraKeyError", "LoraModule", "SingleFileKeyError", "check_lora_keys",
           "check_single_file", "content_digest", "detect_layout", "kohya_module_name", "kohya_state_dict",
           "load_lora_file", "peft_lora_config", "provenance_metadata", "read_lora_modules", "save_lora_diffusers",
           "save_lora_kohya", "save_safetensors", "save_single_file"]
