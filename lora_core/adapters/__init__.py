"""The adapter interface: what a training method adds to a base model, and how it saves.

``lora_core.train`` runs one loop for every method. Everything method-specific sits behind
:class:`Adapter`: which parameters train and at what learning rate, how captions change
(textual inversion's placeholder tokens), what happens after each optimizer step, the
adapter-only state that checkpoints hold, and the files a finished run exports.

One class per method, one file per method, registered by method name::

    @register
    class LoraAdapter(Adapter):
        method = "lora"
        Options = LoraOptions          # a frozen Config with the method's own options
        ...

A ``TrainConfig`` holds ``method="lora"`` and ``options=LoraOptions(...)`` (a dict in JSON/YAML,
``options.rank=8`` on the command line); ``get_adapter(config.method)(config)`` builds the
adapter. The loop calls, in this order::

    adapter.check(base)                 # bad input -> ValueError, before anything trains
    adapter.attach(base)                # freeze the base, add/unfreeze trainables (fp32)
    groups = adapter.param_groups(base) # [{"name": "unet", "params": [...], "lr": 1e-4}, ...]
    for each step:
        captions = [adapter.caption(c) for c in captions]
        ... forward, loss, backward, optimizer.step() ...
        adapter.after_optimizer_step(base)
    adapter.state_dict(base) / adapter.load_state_dict(base, state)   # checkpoints, exact resume
    adapter.export(base, folder, metadata)                            # final weight files

Adapters may read these ``TrainConfig`` fields (stable names): ``options``, ``learning_rate``
(UNet), ``text_encoder_learning_rate`` (``None``: same as ``learning_rate``), ``seed``,
``data.resolution``. Prior preservation (DreamBooth's class images and prior loss) lives in the
loop, not in an adapter, so that any method can use it (``TrainConfig.class_prompt``).

Adapters work on ``base.unet`` and ``base.text_encoder`` themselves. The loop calls, in its
forward passes, the ``accelerator.prepare`` wrappers of the modules that have trainable
parameters after ``attach`` (DDP when distributed), so their gradients sync across processes.

>>> sorted(available_methods())
['dreambooth', 'lora', 'lycoris', 'textual_inversion']
>>> get_adapter("loar")
Traceback (most recent call last):
...
ValueError: unknown training method 'loar'. Valid methods: dreambooth, lora, lycoris, textual_inversion
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from lora_core.config import Config

if TYPE_CHECKING:
    from lora_core.models import BaseModel

# method name -> module in this package that registers it (imported on first use)
_METHOD_MODULES = {
    "lora": "lora",
    "textual_inversion": "textual_inversion",
    "dreambooth": "dreambooth",
    "lycoris": "lycoris",
}
_REGISTRY: dict[str, type["Adapter"]] = {}


@dataclasses.dataclass(frozen=True)
class NoOptions(Config):
    """For methods without options of their own."""


class Adapter(abc.ABC):
    """One training method. Subclasses set ``method`` and ``Options`` and implement the
    abstract methods; the defaults of the others suit methods that train only the UNet.

    ``self.config`` is the whole ``TrainConfig`` (learning rates, seed, ...);
    ``self.options`` is ``config.options``, an instance of ``Options``.
    """

    method: ClassVar[str] = ""
    Options: ClassVar[type[Config]] = NoOptions

    def __init__(self, config: Any):
        self.config = config
        self.options = config.options

    # -- before training ----------------------------------------------------------------
    def check(self, base: "BaseModel") -> None:
        """Raise ``ValueError`` for options that do not fit this model (e.g. target modules
        that match nothing). Called before anything is attached or trained."""

    @abc.abstractmethod
    def attach(self, base: "BaseModel") -> None:
        """Freeze the base (``freeze(base)``), then add or unfreeze the trainable parameters,
        in float32 and on the base's device. Called once per run (also on resume)."""

    @abc.abstractmethod
    def param_groups(self, base: "BaseModel") -> list[dict]:
        """Optimizer parameter groups: ``[{"name": "unet", "params": [...], "lr": float}, ...]``.
        ``name`` labels the group's learning rate in metrics (``lr/unet``, ``lr/text_encoder``)."""

    def trained_parameter_count(self, base: "BaseModel") -> int:
        """Parameters the method learns, as records report them (``trainable_params``): every
        parameter the optimizer updates, unless only part of one trains (textual inversion)."""
        return sum(p.numel() for p in trainable_parameters(self.param_groups(base)))

    @property
    def trains_text_encoder(self) -> bool:
        """True when gradients flow through the text encoder (TE LoRA, TI, DreamBooth with TE).
        When False, and ``caption`` leaves captions unchanged, the loop caches text embeddings."""
        return False

    # -- during training ----------------------------------------------------------------
    def caption(self, caption: str) -> str:
        """The caption the text encoder sees (TI puts its placeholder token in)."""
        return caption

    def after_optimizer_step(self, base: "BaseModel") -> None:
        """Runs after every optimizer step under ``torch.no_grad()`` (TI restores the embedding
        rows of ordinary tokens here)."""

    # -- saving ---------------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self, base: "BaseModel") -> dict[str, torch.Tensor]:
        """Every trained tensor, by a stable name (CPU copies). A checkpoint holds this and
        ``load_state_dict`` restores it exactly: resume and the bit-identity test use it."""

    @abc.abstractmethod
    def load_state_dict(self, base: "BaseModel", state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict` on a base that ``attach`` has prepared."""

    @abc.abstractmethod
    def export(self, base: "BaseModel", folder: Path, metadata: dict[str, str]) -> dict[str, Path]:
        """Write the finished adapter's files into ``folder`` with ``metadata`` (provenance,
        string values) in every safetensors file. Returns ``{layout name: path}``, e.g.
        ``{"diffusers": ..., "kohya": ...}``."""

    def describe(self) -> dict[str, Any]:
        """Method facts for records and provenance metadata (LoRA: rank, alpha, scale, targets)."""
        return {"method": self.method, **self.options.to_dict()}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``cls`` available as ``get_adapter(cls.method)``."""
    if not cls.method:
        raise ValueError(f"{cls.__name__}: set the class attribute `method` before registering")
    _REGISTRY[cls.method] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(set(_METHOD_MODULES) | set(_REGISTRY))


def get_adapter(method: str) -> type[Adapter]:
    """The adapter class registered for ``method`` (imports its module on first use)."""
    if method not in _REGISTRY and method in _METHOD_MODULES:
        importlib.import_module(f"{__name__}.{_METHOD_MODULES[method]}")
    if method not in _REGISTRY:
        raise ValueError(f"unknown training method {method!r}. Valid methods: "
                         f"{', '.join(available_methods())}")
    return _REGISTRY[method]


def freeze(base: "BaseModel") -> None:
    """No gradients anywhere in the base model (adapters call this first in ``attach``)."""
    for module in (base.unet, base.text_encoder, base.vae):
        module.requires_grad_(False)


def trainable_parameters(groups: list[dict]) -> list[torch.nn.Parameter]:
    """All parameters of ``param_groups`` output, in order."""
    return [p for group in groups for p in group["params"]]


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """CPU copies of every parameter with ``requires_grad``, named ``<module key>.<param name>``:
    a ready-made :meth:`Adapter.state_dict` for methods whose trainables are module parameters."""
    return {f"{key}.{name}": p.detach().to("cpu", copy=True)
            for key, module in modules.items() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`trainable_state`) back, bit for bit; names must match exactly."""
    params = {f"{key}.{name}": p for key, module in modules.items() for name, p in module.named_parameters()
              if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"adapter state does not fit the model: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])
