"""lora_core: LoRA, textual inversion, DreamBooth and LyCORIS style fine-tuning of Stable
Diffusion, with honest metrics and reproducible run records."""

__version__ = "0.1.0"
