"""Weight-file formats: A1111/LDM single-file checkpoints and LoRA files (diffusers, kohya)."""
from lora_core.formats.single_file import SingleFileKeyError, check_single_file, save_single_file

__all__ = ["SingleFileKeyError", "check_single_file", "save_single_file"]
