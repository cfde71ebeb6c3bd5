"""The toy world: emoji style sets, part II subject sets and the tiny pretrained base model of the
``tiny`` profile.

``python -m lora_core.toy build`` prepares ``data/`` from the npm emoji packages;
``pretrain-vae``/``pretrain-unet``/``pretrain-all``/``export``/``check`` make and measure
``models/tiny-sd``; ``train-heads`` trains the learned metrics' heads on the world. The world's
vocabulary (vendors, style and subject sets, trigger words) lives in :mod:`lora_core.world`, re-exported
here. See ``book/data.md`` for sources and licences.
"""
from lora_core.toy.build import BuildConfig, build, verify
from lora_core.toy.sources import normalize_key
from lora_core.world import (DATA_DIR, STYLE_CAPTION_TEMPLATE, STYLE_SETS, SUBJECT_SETS, TRIGGER_WORDS, VENDORS,
                             StyleSet, SubjectSet)

__all__ = ["DATA_DIR", "STYLE_CAPTION_TEMPLATE", "STYLE_SETS", "SUBJECT_SETS", "TRIGGER_WORDS", "VENDORS",
           "BuildConfig", "StyleSet", "SubjectSet", "build", "normalize_key", "verify"]
