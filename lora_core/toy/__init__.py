"""The toy world: emoji style sets and the tiny pretrained base model of the ``tiny`` profile.

``python -m lora_core.toy build`` prepares ``data/`` from the npm emoji packages;
``pretrain-vae``/``pretrain-unet``/``pretrain-all``/``export``/``check`` make and measure
``models/tiny-sd``. See ``book/data.md`` for sources and licences.
"""
from lora_core.toy.build import (DATA_DIR, STYLE_CAPTION_TEMPLATE, STYLE_SETS, TRIGGER_WORDS, BuildConfig,
                                 StyleSet, build, verify)
from lora_core.toy.sources import VENDORS, normalize_key

__all__ = ["DATA_DIR", "STYLE_CAPTION_TEMPLATE", "STYLE_SETS", "TRIGGER_WORDS", "VENDORS", "BuildConfig",
           "StyleSet", "build", "normalize_key", "verify"]
