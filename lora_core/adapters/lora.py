"""LoRA on the UNet (and optionally the text encoder) through peft, as the diffusers
``train_text_to_image_lora.py`` example does (``unet.add_adapter(LoraConfig(...))``).

Rank, alpha and scale are three explicit numbers. ``alpha`` is either fixed (``alpha=16``: the
scale ``alpha / rank`` falls as the rank grows, kohya-style and study S1) or tied to the rank
(``alpha=None`` and ``alpha_per_rank=2``: alpha = 2 x rank, study S5; the diffusers examples use
``alpha_per_rank=1``). Records and files store all three.

>>> opts = LoraOptions(rank=8, alpha=None, alpha_per_rank=2.0)
>>> opts.effective_alpha, opts.scale
(16.0, 2.0)
>>> LoraOptions(rank=8, alpha=4.0).scale
0.5
>>> LoraOptions(rank=0)
Traceback (most recent call last):
...
ValueError: LoraOptions: rank must be a positive integer, got 0
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from lora_core.adapters import Adapter, freeze, load_trainable_state, register, trainable_state
from lora_core.config import Config, option

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD_TARGETS = ("ff.net.0.proj", "ff.net.2")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER_NAME = "default"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"


@dataclass(frozen=True)
class LoraOptions(Config):
    rank: int = option(4, "LoRA rank r")
    alpha: float | None = option(None, "LoRA alpha; None ties it to the rank: alpha = alpha_per_rank * rank")
    alpha_per_rank: float = option(1.0, "alpha / rank when alpha is None (1: diffusers examples, 2: study S5)")
    dropout: float = option(0.0, "dropout on the LoRA branch input (peft lora_dropout)")
    target_modules: tuple[str, ...] = option(ATTENTION_TARGETS, "UNet module names (suffixes) that get "
                                             "LoRA; add ff.net.0.proj, ff.net.2, conv1, conv2, proj_in, ...")
    train_text_encoder: bool = option(False, "also LoRA on the text encoder (lr: text_encoder_learning_rate)")
    text_encoder_target_modules: tuple[str, ...] = option(TEXT_ENCODER_TARGETS, "text encoder module names")
    init: str = option("gaussian", "peft init_lora_weights: gaussian (diffusers examples) or default "
                                   "(kaiming-uniform A, kohya-like)")

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoraOptions: rank must be a positive integer, got {self.rank}")
        if self.effective_alpha <= 0:
            raise ValueError(f"LoraOptions: alpha must be positive, got {self.effective_alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraOptions: dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoraOptions: target_modules is empty")
        if self.init not in ("gaussian", "default"):
            raise ValueError(f"LoraOptions: init must be gaussian or default, got {self.init!r}")

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else self.alpha_per_rank * self.rank

    @property
    def scale(self) -> float:
        return self.effective_alpha / self.rank


def module_suffixes(model) -> set[str]:
    """Every dotted suffix of every module name (``attn1.to_q``, ``to_q``, ...): what a peft
    ``target_modules`` entry can match."""
    suffixes = set()
    for name, _ in model.named_modules():
        parts = name.split(".")
        suffixes.update(".".join(parts[i:]) for i in range(len(parts)) if name)
    return suffixes


def check_targets(model, targets: tuple[str, ...], what: str) -> None:
    """Raise ValueError for target names that match no module, listing close names."""
    suffixes = module_suffixes(model)
    for target in targets:
        if target not in suffixes:
            close = difflib.get_close_matches(target, sorted(suffixes), n=5, cutoff=0.5)
            raise ValueError(f"LoRA target module {target!r} matches nothing in the {what}. "
                             f"Close module names: {', '.join(close) or 'none'}")


@register
class LoraAdapter(Adapter):
    method = "lora"
    Options = LoraOptions

    def _peft_config(self, targets: tuple[str, ...]):
        from peft import LoraConfig

        return LoraConfig(r=self.options.rank, lora_alpha=self.options.effective_alpha,
                          lora_dropout=self.options.dropout, target_modules=list(targets),
                          init_lora_weights=True if self.options.init == "default" else "gaussian")

    @property
    def trains_text_encoder(self) -> bool:
        return self.options.train_text_encoder

    def check(self, base) -> None:
        check_targets(base.unet, self.options.target_modules, "UNet")
        if self.options.train_text_encoder:
            check_targets(base.text_encoder, self.options.text_encoder_target_modules, "text encoder")

    def attach(self, base) -> None:
        freeze(base)
        base.unet.add_adapter(self._peft_config(self.options.target_modules), adapter_name=ADAPTER_NAME)
        if self.options.train_text_encoder:
            base.text_encoder.add_adapter(self._peft_config(self.options.text_encoder_target_modules),
                                          adapter_name=ADAPTER_NAME)

    def _modules(self, base) -> dict:
        modules = {"unet": base.unet}
        if self.options.train_text_encoder:
            modules["text_encoder"] = base.text_encoder
        return modules

    def param_groups(self, base) -> list[dict]:
        te_lr = self.config.text_encoder_learning_rate
        lrs = {"unet": self.config.learning_rate,
               "text_encoder": self.config.learning_rate if te_lr is None else te_lr}
        return [{"name": key, "params": [p for p in module.parameters() if p.requires_grad], "lr": lrs[key]}
                for key, module in self._modules(base).items()]

    def state_dict(self, base) -> dict:
        return trainable_state(self._modules(base))

    def load_state_dict(self, base, state) -> None:
        load_trainable_state(self._modules(base), state)

    def describe(self) -> dict:
        return {"method": self.method, **self.options.to_dict(), "alpha": self.options.effective_alpha,
                "scale": self.options.scale}

    def export(self, base, folder: Path, metadata: dict[str, str]) -> dict[str, Path]:
        from lora_core.formats import save_lora_diffusers, save_lora_kohya

        folder, with_te = Path(folder), self.options.train_text_encoder
        unet_state, te_state = peft_state_dicts(base, with_te)
        return {
            "diffusers": save_lora_diffusers(folder / DIFFUSERS_FILE, base.unet,
                                             base.text_encoder if with_te else None, ADAPTER_NAME, metadata),
            "kohya": save_lora_kohya(folder / KOHYA_FILE, unet_state, te_state, self.options.effective_alpha,
                                     metadata),
        }


def peft_state_dicts(base, with_text_encoder: bool) -> tuple[dict, dict]:
    """The LoRA tensors of UNet and text encoder in peft naming (``...to_q.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    unet_state = get_peft_model_state_dict(base.unet, adapter_name=ADAPTER_NAME)
    te_state = get_peft_model_state_dict(base.text_encoder, adapter_name=ADAPTER_NAME) if with_text_encoder else {}
    return unet_state, te_state

