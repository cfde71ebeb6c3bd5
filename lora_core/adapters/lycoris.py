"""LyCORIS: LoCon, LoHa, LoKr and (IA)^3 adapters, via the ``lycoris-lora`` package.

Why ``lycoris-lora`` and not peft's LoHa/LoKr/IA3 tuners: it is the reference implementation
by the method's authors, and the files it writes (``lora_unet_*``/``lora_te_*`` keys with
``lora_down``/``hada_w1_a``/``lokr_w1``/IA3 ``weight`` tensors, ``ss_network_module =
lycoris.kohya``) are what kohya sd-scripts, A1111 and ComfyUI load. peft's tuners save a
peft layout that diffusers' ``load_lora_weights`` does not read for LoHa/LoKr/IA3, so a reader
could not take the result to the tools they use.

What we work around in lycoris-lora 4.1.3:

* ``create_lycoris(preset=...)`` writes the preset into *class attributes* of
  ``LycorisNetwork`` (targets, prefix, exclusions), so one call leaks into the next; it takes
  only preset names or TOML paths, and the built-in presets' ``unet_target_module`` keys are
  ignored by that wrapper (it then wraps every Linear/Conv/Norm, GroupNorm included). We build
  ``LycorisNetwork`` directly under a complete preset and restore the class attributes after.
* Its ``ia3`` preset names targets (``to_k``) that ``re.match`` never matches against diffusers'
  dotted module paths, and ``attn-only`` names sd-scripts classes (``CrossAttention``); we use
  fnmatch patterns and diffusers class names instead, and ``attach`` refuses a selection that
  wraps nothing.
* An unknown ``algo`` is a bare ``KeyError`` deep inside; :class:`LycorisOptions` checks it first.
* ``LycorisNetwork.load_weights`` falls back to ``torch.load`` (unsafe pickles); we read
  safetensors ourselves and load with ``strict=True``.
* Module initialisation draws from the global RNG; we fork and seed it.

>>> from types import SimpleNamespace
>>> from lora_core.models import load_base
>>> base = load_base("tiny-random")
>>> opts = LycorisOptions(algo="loha", rank=4, alpha=2.0)
>>> adapter = LycorisAdapter(SimpleNamespace(options=opts, learning_rate=1e-3,
...                                          text_encoder_learning_rate=None, seed=0))
>>> adapter.attach(base)
>>> [g["name"] for g in adapter.param_groups(base)], adapter.describe()["scale"]
(['unet'], 0.5)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lycoris import LycorisNetwork

from lora_core.adapters import Adapter, freeze, register
from lora_core.config import Config, option
from lora_core.formats.safetensors_file import save_safetensors
from lora_core.io import read_safetensors

if TYPE_CHECKING:
    from lora_core.models import BaseModel

ALGOS = ("locon", "loha", "lokr", "ia3")
PRESETS = ("full", "attn-mlp")
UNET_PREFIX, TEXT_ENCODER_PREFIX = "lora_unet", "lora_te"  # kohya's key prefixes
EXPORT_NAME = "lycoris.safetensors"
OPTIONS_METADATA_KEY = "lsl_lycoris_options"

# Targets by diffusers/transformers class name. "full" is LyCORIS' full preset (attention,
# resnets, up/downsamplers, conv_in/out, time embedding); "attn-mlp" only transformer blocks.
_UNET_BLOCKS = {"full": ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"],
                "attn-mlp": ["Transformer2DModel"]}
_UNET_NAMES = {"full": ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"],
               "attn-mlp": []}
_TEXT_ENCODER_BLOCKS = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
# (IA)^3 as in its paper and LyCORIS' ia3 preset: rescale keys, values and the feed-forward
# input (train_on_input for the second FF projection).
_IA3_UNET = ["*.to_k", "*.to_v", "*.ff.net.2"]
_IA3_TEXT_ENCODER = ["*.k_proj", "*.v_proj", "*.mlp.fc2"]
_PRESET_ATTRIBUTES = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "MODULE_ALGO_MAP",
                      "NAME_ALGO_MAP", "LORA_PREFIX", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")
_IA3_ON_INPUT = {"*.ff.net.2": {"train_on_input": True}, "*.mlp.fc2": {"train_on_input": True}}


@dataclasses.dataclass(frozen=True)
class LycorisOptions(Config):
    algo: str = option("locon", "LyCORIS algorithm: locon (LoRA incl. 3x3 convs), loha, lokr, ia3")
    rank: int = option(4, "linear_dim: rank of linear/1x1 layers (ignored by ia3)")
    alpha: float = option(4.0, "linear_alpha; scale = alpha / rank (ignored by ia3)")
    conv_rank: int = option(4, "conv_dim: rank of 3x3 convolutions (preset 'full'; 0 = skip them)")
    conv_alpha: float = option(4.0, "conv_alpha; conv scale = conv_alpha / conv_rank")
    factor: int = option(-1, "LoKr Kronecker factor (-1: as balanced as possible)")
    preset: str = option("full", "which UNet modules: full (attention, resnets, convs) or attn-mlp")
    train_text_encoder: bool = option(False, "also adapt the CLIP text encoder (lora_te_* keys)")
    bypass: bool = option(False, "LyCORIS' bypass mode: the adapter acts beside the frozen layer (ia3: scales "
                                 "its output, or input, as peft's IA3 does) instead of building the merged "
                                 "weight and a second product at every call; the same function, and files alike")

    def __post_init__(self):
        if self.algo not in ALGOS:
            hint = " (plain LoRA is method 'lora'; LoCon is algo 'locon')" if self.algo == "lora" else ""
            raise ValueError(f"LycorisOptions: unknown algo {self.algo!r}{hint}. "
                             f"Valid algos: {', '.join(ALGOS)}")
        if self.preset not in PRESETS:
            raise ValueError(f"LycorisOptions: unknown preset {self.preset!r}. Valid presets: {', '.join(PRESETS)}")
        if self.rank < 1 or self.conv_rank < 0:
            raise ValueError(f"LycorisOptions: rank must be >= 1 and conv_rank >= 0, got {self.rank}, {self.conv_rank}")
        if self.alpha <= 0 or self.conv_alpha <= 0:
            raise ValueError(f"LycorisOptions: alpha and conv_alpha must be > 0, got {self.alpha}, {self.conv_alpha}")


def _preset(options: LycorisOptions, prefix: str) -> dict[str, Any]:
    """Every key ``LycorisNetwork.apply_preset`` reads, so no earlier call leaks in."""
    text_encoder = prefix.startswith(TEXT_ENCODER_PREFIX)
    if options.algo == "ia3":
        return dict(enable_conv=False, target_module=[], module_algo_map={}, exclude_name=[],
                    target_name=_IA3_TEXT_ENCODER if text_encoder else _IA3_UNET,
                    name_algo_map=_IA3_ON_INPUT, use_fnmatch=True, lora_prefix=prefix)
    return dict(enable_conv=options.preset == "full" and options.conv_rank > 0,
                target_module=_TEXT_ENCODER_BLOCKS if text_encoder else _UNET_BLOCKS[options.preset],
                target_name=[] if text_encoder else _UNET_NAMES[options.preset],
                module_algo_map={}, name_algo_map={}, exclude_name=[], use_fnmatch=False,
                lora_prefix=prefix)


@contextlib.contextmanager
def _preset_applied(preset: dict[str, Any]):
    """Apply ``preset`` to ``LycorisNetwork``'s class attributes, and put them back afterwards."""
    saved = {name: getattr(LycorisNetwork, name) for name in _PRESET_ATTRIBUTES}
    LycorisNetwork.apply_preset(preset)
    try:
        yield LycorisNetwork
    finally:
        for name, value in saved.items():
            setattr(LycorisNetwork, name, value)


def build_networks(base: "BaseModel", options: LycorisOptions, seed: int) -> dict[str, torch.nn.Module]:
    """Create and apply the LyCORIS networks (``{"unet": net[, "text_encoder": net]}``), seeded."""
    targets = [("unet", base.unet, UNET_PREFIX)]
    if options.train_text_encoder:
        # kohya names CLIP modules from text_model.*; transformers 5's CLIPTextModel has no such level
        nested = hasattr(base.text_encoder, "text_model")
        prefix = TEXT_ENCODER_PREFIX if nested else f"{TEXT_ENCODER_PREFIX}_text_model"
        targets.append(("text_encoder", base.text_encoder, prefix))
    networks = {}
    lycoris_logger = logging.getLogger("LyCORIS")
    level = lycoris_logger.level
    lycoris_logger.setLevel(logging.WARNING)  # it logs a dozen INFO lines per network
    try:
        for name, module, prefix in targets:
            with _preset_applied(_preset(options, prefix)) as network_class, torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                # create_lycoris' own defaults, minus its preset handling (see module docstring)
                network = network_class(
                    module, multiplier=1.0, lora_dim=options.rank, alpha=options.alpha,
                    conv_lora_dim=options.conv_rank, conv_alpha=options.conv_alpha,
                    network_module=options.algo, factor=options.factor, decompose_both=False,
                    block_size=4, constraint=0.0, rescaled=False, weight_decompose=False,
                    wd_on_out=True, full_matrix=False, bypass_mode=options.bypass,
                    unbalanced_factorization=False, warn_on_unmatched=False)
            device = next(module.parameters()).device
            network.to(device=device, dtype=torch.float32)
            network.apply_to()
            networks[name] = network
    finally:
        lycoris_logger.setLevel(level)
    return networks


def wrapped_modules(base: "BaseModel", networks: dict[str, torch.nn.Module]) -> list[dict[str, Any]]:
    """One row per module the ``networks`` (from :func:`build_networks` or :func:`load_lycoris`)
    wrap: ``network`` (unet or text_encoder), ``module`` (its dotted path in that model), ``algo``
    and ``parameters`` (what it trains there). The check that a preset wraps what it says.

    >>> from lora_core.models import load_base
    >>> base = load_base("tiny-random")
    >>> rows = wrapped_modules(base, build_networks(base, LycorisOptions(algo="ia3"), seed=0))
    >>> sorted({row["module"].rsplit(".", 1)[-1] for row in rows}), rows[0]["algo"]
    (['2', 'to_k', 'to_v'], 'ia3')
    """
    models = {"unet": base.unet, "text_encoder": base.text_encoder}
    rows = []
    for name, network in networks.items():
        paths = {id(module): path for path, module in models[name].named_modules()}
        for wrapper in network.loras:
            rows.append({"network": name, "module": paths[id(wrapper.org_module[0])], "algo": wrapper.name,
                         "parameters": sum(p.numel() for p in wrapper.parameters())})
    return rows


def _state_dict(networks: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone()
            for network in networks.values() for key, value in network.state_dict().items()}


def _load_into(networks: dict[str, torch.nn.Module], state: dict[str, torch.Tensor], source: str) -> None:
    expected = {key for network in networks.values() for key in network.state_dict()}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"{source}: LyCORIS keys do not match the model: {len(missing)} missing "
                       f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for network in networks.values():
        own = network.state_dict()
        network.load_state_dict({key: state[key] for key in own}, strict=True)


@register
class LycorisAdapter(Adapter):
    method = "lycoris"
    Options = LycorisOptions

    def __init__(self, config: Any):
        super().__init__(config)
        self.networks: dict[str, torch.nn.Module] = {}

    def attach(self, base: "BaseModel") -> None:
        freeze(base)
        self.networks = build_networks(base, self.options, self.config.seed)
        for name, network in self.networks.items():
            if not network.loras:
                raise ValueError(f"LyCORIS {self.options.algo} with preset {self.options.preset!r} "
                                 f"wrapped no module of the {name}")
            network.requires_grad_(True)

    @property
    def trains_text_encoder(self) -> bool:
        return self.options.train_text_encoder

    def param_groups(self, base: "BaseModel") -> list[dict]:
        te_lr = self.config.text_encoder_learning_rate
        lrs = {"unet": self.config.learning_rate,
               "text_encoder": self.config.learning_rate if te_lr is None else te_lr}
        return [{"name": name, "params": [p for p in network.parameters() if p.requires_grad], "lr": lrs[name]}
                for name, network in self.networks.items()]

    def state_dict(self, base: "BaseModel") -> dict[str, torch.Tensor]:
        return _state_dict(self.networks)

    def load_state_dict(self, base: "BaseModel", state: dict[str, torch.Tensor]) -> None:
        _load_into(self.networks, state, "checkpoint")

    def describe(self) -> dict[str, Any]:
        facts = {"method": self.method, **self.options.to_dict()}
        facts["scale"] = self.options.alpha / self.options.rank
        facts["conv_scale"] = self.options.conv_alpha / max(self.options.conv_rank, 1)
        return facts

    def export(self, base: "BaseModel", folder: Path, metadata: dict[str, str]) -> dict[str, Path]:
        """``lycoris.safetensors``: kohya-style keys, kohya/LyCORIS ``ss_*`` metadata plus ours."""
        path = Path(folder) / EXPORT_NAME
        o = self.options
        network_args = {"algo": o.algo, "preset": o.preset, "conv_dim": o.conv_rank,
                        "conv_alpha": o.conv_alpha, "factor": o.factor}
        own = {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(o.rank),
               "ss_network_alpha": str(o.alpha), "ss_network_args": json.dumps(network_args),
               OPTIONS_METADATA_KEY: json.dumps(o.to_dict(), sort_keys=True)}
        tensors = {key: value.contiguous() for key, value in self.state_dict(base).items()}
        save_safetensors(path, tensors, {**{k: str(v) for k, v in metadata.items()}, **own})
        return {"kohya": path}


def load_lycoris(base: "BaseModel", path: str | Path) -> dict[str, torch.nn.Module]:
    """Apply an exported ``lycoris.safetensors`` to ``base`` (in place); returns the networks.

    The options travel in the file's metadata, so a fresh base of the same architecture gives
    the trained model's outputs exactly. The networks wrap modules' ``forward`` and leave the
    model's own weights as they were, so the file's content is folded into ``base``'s
    fingerprint (``models.mark_applied``): caches keyed by it then tell the adapted model from
    the base.
    """
    from lora_core.formats.safetensors_file import content_digest
    from lora_core.models import mark_applied

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors LyCORIS files are loaded (pickles can run code)")
    state, metadata = read_safetensors(path)
    if OPTIONS_METADATA_KEY not in metadata:
        raise KeyError(f"{path}: no {OPTIONS_METADATA_KEY!r} metadata; not a file exported by "
                       "lora_core.adapters.lycoris")
    options = LycorisOptions.from_dict(json.loads(metadata[OPTIONS_METADATA_KEY]))
    freeze(base)
    networks = build_networks(base, options, seed=0)
    _load_into(networks, state, str(path))
    mark_applied(base, content_digest(path))
    return networks
