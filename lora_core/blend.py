"""Using several LoRAs at once: output-space blending, weight-space interpolation, merging, fusing.

Every LoRA module holds two factors and a scale: ``delta W = s B A`` with ``A`` (down, r x in),
``B`` (up, out x r) and ``s = alpha / r``. Three different things are called "mixing" in the wild:

* **output-space blending** (``set_adapter_weights``, diffusers' ``set_adapters``): several adapters
  active at once, ``delta W = sum_i w_i s_i B_i A_i``. Linear in the weights, exact.
* **weight-space interpolation** (``interpolate_adapters``, the anime study's Exp. IV):
  ``theta_mix = a theta_A + (1 - a) theta_B`` applied to ``A`` and ``B`` separately, so
  ``delta = s (a B_A + (1-a) B_B)(a A_A + (1-a) A_B)``. It differs from blending by the cross terms:
  ``delta_interp - delta_blend = -a (1 - a) s (B_A - B_B)(A_A - A_B)`` (``interpolation_gap``).
* **merging into one new adapter** (``merge_adapters``, peft's ``add_weighted_adapter`` rules).

>>> from lora_core.models import load_base
>>> base = load_base("tiny-random", seed=0)
>>> add_random_adapter(base, "ink", rank=4, alpha=8, seed=1); add_random_adapter(base, "moss", rank=4, alpha=4, seed=2)
>>> gap = interpolation_gap(lora_factors(base, "ink"), lora_factors(base, "moss"), a=0.5)
>>> bool((gap.relative_gap > 0).all()), float(interpolation_gap(lora_factors(base, "ink"), lora_factors(base, "moss"), a=1.0).relative_gap.max())
(True, 0.0)
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch

COMPONENTS = ("unet", "text_encoder")
SANE_WEIGHT = 2.0  # |w| above this is almost always a typo (A1111 users rarely exceed 1.5)
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
COMBINATION_TYPES = ("linear", "cat", "svd")


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA: ``delta W = scale * up @ down`` (conv factors are flattened for the product)."""

    down: torch.Tensor  # A: (r, in) or (r, in, kh, kw)
    up: torch.Tensor    # B: (out, r) or (out, r, 1, 1)
    scale: float        # alpha / r

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self) -> torch.Tensor:
        """``scale * B @ A`` in the shape of the base weight."""
        shape = (self.up.shape[0], *self.down.shape[1:])
        return (self.scale * (self.up.flatten(1) @ self.down.flatten(1))).reshape(shape)


# ---- finding the LoRA layers -------------------------------------------------------------------

def tuner_layers(base) -> dict[str, torch.nn.Module]:
    """Every peft LoRA layer of the UNet and text encoder, keyed ``"unet.<module path>"``."""
    from peft.tuners.lora import LoraLayer

    return {f"{component}.{name}": module
            for component in COMPONENTS
            for name, module in getattr(base, component).named_modules()
            if isinstance(module, LoraLayer)}


def adapter_names(base) -> list[str]:
    """Names of the adapters present in ``base`` (any component), in order of appearance."""
    names: dict[str, None] = {}
    for layer in tuner_layers(base).values():
        names.update(dict.fromkeys(layer.lora_A))
    return list(names)


def _check_present(base, names) -> None:
    present = adapter_names(base)
    missing = [n for n in names if n not in present]
    if missing:
        raise KeyError(f"adapter(s) {', '.join(map(repr, missing))} not loaded; present: "
                       f"{', '.join(map(repr, present)) or 'none'}")


def _unit_scale(layer, name: str) -> float:
    """The layer's scale at weight 1: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    rank = math.sqrt(layer.r[name]) if layer.use_rslora.get(name, False) else layer.r[name]
    return layer.lora_alpha[name] / rank


def lora_factors(base, name: str) -> dict[str, LoraFactors]:
    """Copies of adapter ``name``'s factors, keyed by module (``"unet.down_blocks.0...to_q"``)."""
    _check_present(base, [name])
    return {key: LoraFactors(layer.lora_A[name].weight.detach().clone(),
                             layer.lora_B[name].weight.detach().clone(), _unit_scale(layer, name))
            for key, layer in tuner_layers(base).items() if name in layer.lora_A}


# ---- output-space blending ---------------------------------------------------------------------

def warn_extreme_weights(weights: Mapping[str, float]) -> None:
    extreme = {n: w for n, w in weights.items() if abs(w) > SANE_WEIGHT}
    if extreme:
        warnings.warn(f"LoRA weight(s) outside [-{SANE_WEIGHT:g}, {SANE_WEIGHT:g}]: {extreme}; "
                      "images usually break down there", stacklevel=3)


def set_adapter_weights(base, weights: Mapping[str, float]) -> None:
    """Activate the named adapters with these weights (output-space blend); ``{}`` = base model.

    The effective update of every module is ``sum_i w_i (alpha_i / r_i) B_i A_i``. Like peft's
    ``set_adapter``, this marks the active adapters trainable; :func:`adapter_state` /
    :func:`restore_adapter_state` undo everything it changes.
    """
    _check_present(base, list(weights))
    warn_extreme_weights(weights)
    for layer in tuner_layers(base).values():
        if not weights:
            layer.enable_adapters(False)
            continue
        layer.enable_adapters(True)
        layer.set_adapter(list(weights))
        for name, weight in weights.items():
            layer.set_scale(name, weight)


def blend_deltas(factor_sets: Sequence[Mapping[str, LoraFactors]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Explicit ``delta W = sum_i w_i s_i B_i A_i`` per module (modules missing from a set add 0)."""
    modules = dict.fromkeys(key for factors in factor_sets for key in factors)
    return {key: sum(w * factors[key].delta() for factors, w in zip(factor_sets, weights) if key in factors)
            for key in modules}


@dataclass
class AdapterState:
    """What generation and blending may change: active adapters, scales, on/off, requires_grad."""

    layers: dict[str, tuple[list[str], dict[str, float], bool]]
    requires_grad: dict[str, bool]


def adapter_state(base) -> AdapterState:
    layers = {key: (list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters)
              for key, layer in tuner_layers(base).items()}
    requires_grad = {f"{c}.{n}": p.requires_grad for c in COMPONENTS
                     for n, p in getattr(base, c).named_parameters()}
    return AdapterState(layers, requires_grad)


def restore_adapter_state(base, state: AdapterState) -> None:
    for key, layer in tuner_layers(base).items():
        if key not in state.layers:  # a layer added since: its adapters start inactive, like the base
            layer.set_adapter([])
            continue
        active, scaling, disabled = state.layers[key]
        layer.set_adapter(active)
        layer._disable_adapters = disabled  # peft has no setter that leaves requires_grad alone
        layer.scaling.update({n: s for n, s in scaling.items() if n in layer.scaling})
    for component in COMPONENTS:
        for name, param in getattr(base, component).named_parameters():
            param.requires_grad_(state.requires_grad.get(f"{component}.{name}", False))


# ---- loading and removing adapter files ---------------------------------------------------------

def load_lora(base, path: str | Path, adapter_name: str) -> None:
    """Load a LoRA file (kohya/A1111, diffusers or peft layout) as inactive adapter ``adapter_name``,
    every module at its own ``alpha / rank`` (``formats.read_lora_modules`` says where each alpha
    comes from; diffusers' ``load_lora_weights`` gives a kohya file's modules one alpha).

    Works on any base of the same architecture as the one the LoRA was trained on (another
    checkpoint from ``load_base(folder)`` or ``load_base(file.safetensors, config=...)``). A file
    whose modules do not fit raises ``LoraKeyError`` summarising matched and unmatched keys; one
    whose scale cannot be known or applied exactly raises ``ValueError`` naming the file and the
    module, and nothing is loaded.
    """
    from lora_core.formats import load_lora_file, read_lora_modules

    if adapter_name in adapter_names(base):
        raise ValueError(f"adapter {adapter_name!r} already exists; delete it or pick another name")
    modules = read_lora_modules(load_lora_file(path), base.unet, base.text_encoder)
    try:
        add_adapter_from_factors(base, adapter_name, {key: LoraFactors(m.down, m.up, m.alpha / m.rank)
                                                      for key, m in modules.items()},
                                 alphas={key: m.alpha for key, m in modules.items()})
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def unique_adapter_name(base, stem: str) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... if an adapter of that name exists."""
    present, name, index = set(adapter_names(base)), stem, 1
    while name in present:
        index += 1
        name = f"{stem}_{index}"
    return name


def remove_adapters(base, names: Sequence[str]) -> None:
    """Delete adapters. A component left with no adapter gets its plain layers back, so its
    ``state_dict`` keys are the base model's again (the parameters stay the same objects)."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    for component in COMPONENTS:
        model = getattr(base, component)
        for name in names:
            if name in getattr(model, "peft_config", {}):
                with warnings.catch_warnings():  # peft warns when the deleted adapter was active
                    warnings.simplefilter("ignore")
                    delete_adapter_layers(model, name)
                getattr(model, "peft_config", {}).pop(name, None)
        layers = tuner_layers_of(model).values()
        if layers and not any(layer.lora_A for layer in layers):
            _unwrap(model)


def load_embedding(base, path: str | Path, token: str) -> None:
    """Add a textual-inversion embedding (A1111 or diffusers ``.safetensors``) as ``token``.

    It combines freely with LoRAs: the token lives in the tokenizer and text encoder, the LoRA in
    the attention layers.
    """
    from lora_core.io import check_safetensors

    if Path(path).suffix != ".safetensors":
        raise ValueError(f"{path}: embeddings are read from .safetensors only (pickles can run code)")
    base.pipeline().load_textual_inversion(str(check_safetensors(path)), token=token)


# ---- weight-space interpolation and merging ----------------------------------------------------

def _check_same_modules(factor_sets: Sequence[Mapping[str, LoraFactors]], what: str, same_rank: bool) -> None:
    first = factor_sets[0]
    for index, other in enumerate(factor_sets[1:], start=1):
        if set(other) != set(first):
            only_first, only_other = sorted(set(first) - set(other)), sorted(set(other) - set(first))
            raise ValueError(f"{what}: adapters 0 and {index} target different modules "
                             f"({len(only_first)} only in 0, e.g. {only_first[:2]}; {len(only_other)} only in "
                             f"{index}, e.g. {only_other[:2]}); train them with the same target_modules")
        if same_rank:
            for key in first:
                if other[key].rank != first[key].rank:
                    raise ValueError(f"{what}: rank differs at {key} ({first[key].rank} vs {other[key].rank}); "
                                     "use merge_adapters(..., combination_type='cat' or 'svd') instead")


def _folded(factors: LoraFactors) -> LoraFactors:
    """The same delta with the scale moved into the factors: sqrt(s) B, sqrt(s) A, scale 1."""
    root = math.sqrt(factors.scale)
    return LoraFactors(root * factors.down, root * factors.up, 1.0)


def interpolate_factors(factors_a: Mapping[str, LoraFactors], factors_b: Mapping[str, LoraFactors],
                        a: float) -> dict[str, LoraFactors]:
    """``A_mix = a A_a + (1-a) A_b`` and ``B_mix = a B_a + (1-a) B_b`` for every module.

    Rule: ranks and target modules must match (else ValueError). Where both scales agree the scale is
    kept; where they differ each factor is first multiplied by ``sqrt(scale)`` and the mix has scale 1,
    so that ``a`` in {0, 1} still reproduces each adapter (up to the rounding of the square roots).
    """
    _check_same_modules([factors_a, factors_b], "interpolation", same_rank=True)
    mixed = {}
    for key, fa in factors_a.items():
        fb = factors_b[key]
        if fa.scale != fb.scale:
            fa, fb = _folded(fa), _folded(fb)
        mixed[key] = LoraFactors(a * fa.down + (1 - a) * fb.down, a * fa.up + (1 - a) * fb.up, fa.scale)
    return mixed


def interpolation_gap(factors_a: Mapping[str, LoraFactors], factors_b: Mapping[str, LoraFactors],
                      a: float) -> pd.DataFrame:
    """Per module, how far weight-space interpolation is from output-space blending at the same ``a``.

    ``gap = delta_interp - delta_blend = -a (1-a) s (B_a - B_b)(A_a - A_b)`` (scales folded as in
    :func:`interpolate_factors`), computed in this closed form so it is exactly 0 at ``a`` in {0, 1}
    and for identical adapters. ``relative_gap = ||gap||_F / ||delta_blend||_F``.
    """
    _check_same_modules([factors_a, factors_b], "interpolation", same_rank=True)
    rows = []
    for key, fa in factors_a.items():
        fb = factors_b[key]
        blend = a * fa.delta() + (1 - a) * fb.delta()
        if fa.scale != fb.scale:
            fa, fb = _folded(fa), _folded(fb)
        gap = LoraFactors(fa.down - fb.down, -a * (1 - a) * (fa.up - fb.up), fa.scale).delta()
        gap_norm, blend_norm = float(torch.linalg.norm(gap)), float(torch.linalg.norm(blend))
        rows.append(dict(module=key, gap_norm=gap_norm, blend_norm=blend_norm,
                         relative_gap=gap_norm / blend_norm if blend_norm else (0.0 if gap_norm == 0 else math.inf)))
    return pd.DataFrame(rows)


def interpolation_gap_sweep(factors_a: Mapping[str, LoraFactors], factors_b: Mapping[str, LoraFactors],
                            alphas: Sequence[float]) -> pd.DataFrame:
    """:func:`interpolation_gap` for several ``a`` in one table (column ``a``), ready to plot."""
    return pd.concat([interpolation_gap(factors_a, factors_b, a).assign(a=a) for a in alphas], ignore_index=True)


def merge_factors(factor_sets: Sequence[Mapping[str, LoraFactors]], weights: Sequence[float],
                  combination_type: str, svd_rank: int | None = None) -> dict[str, LoraFactors]:
    """One adapter from several, by peft's ``add_weighted_adapter`` rules (result scale 1, alpha = r).

    * ``linear`` (equal ranks): ``A = sum_i sign(w_i s_i) sqrt|w_i s_i| A_i``,
      ``B = sum_i sqrt|w_i s_i| B_i``. Cheap but NOT the blend: cross terms ``B_i A_j`` appear.
    * ``cat``: ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]`` (rows), ``B = [B_1, B_2, ...]`` (columns), rank
      ``sum r_i``. Exactly the blend ``sum_i w_i s_i B_i A_i``.
    * ``svd``: truncated SVD of the exact blend to rank ``svd_rank`` (default ``max r_i``):
      ``B = U_k S_k``, ``A = V_k^T``. Exact when the blend's rank is at most ``svd_rank``.
    """
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"combination_type {combination_type!r}: expected one of {', '.join(COMBINATION_TYPES)}")
    if len(factor_sets) != len(weights):
        raise ValueError(f"{len(factor_sets)} adapters but {len(weights)} weights")
    warn_extreme_weights({str(i): w for i, w in enumerate(weights)})
    _check_same_modules(factor_sets, f"merge ({combination_type})", same_rank=combination_type == "linear")
    merged = {}
    for key in factor_sets[0]:
        parts = [factors[key] for factors in factor_sets]
        if combination_type == "linear":
            coeffs = [w * f.scale for f, w in zip(parts, weights)]
            down = sum(math.copysign(math.sqrt(abs(c)), c) * f.down for f, c in zip(parts, coeffs))
            up = sum(math.sqrt(abs(c)) * f.up for f, c in zip(parts, coeffs))
        elif combination_type == "cat":
            down = torch.cat([w * f.scale * f.down for f, w in zip(parts, weights)], dim=0)
            up = torch.cat([f.up for f in parts], dim=1)
        else:
            rank = svd_rank or max(f.rank for f in parts)
            blend = sum(w * f.delta() for f, w in zip(parts, weights)).flatten(1)
            u, s, vh = torch.linalg.svd(blend, full_matrices=False)
            up_shape = (parts[0].up.shape[0], rank, *parts[0].up.shape[2:])
            down_shape = (rank, *parts[0].down.shape[1:])
            up, down = (u[:, :rank] * s[:rank]).reshape(up_shape), vh[:rank].reshape(down_shape)
        merged[key] = LoraFactors(down.contiguous(), up.contiguous(), 1.0)
    return merged


def _add_peft_adapter(model: torch.nn.Module, name: str, config) -> None:
    with warnings.catch_warnings():  # peft warns on every second adapter that several adapters exist
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        model.add_adapter(config, adapter_name=name)


def add_adapter_from_factors(base, name: str, factors: Mapping[str, LoraFactors],
                             alphas: Mapping[str, float] | None = None) -> None:
    """Add a new (inactive, frozen) adapter holding exactly these factors, each module at its own
    rank and scale.

    peft stores an alpha per module: ``alphas[key]`` where given (a file's own alphas, kept exact),
    else ``scale * rank``. Raises ``ValueError`` naming the module, and adds nothing, when a factor
    does not fit its layer or peft would apply another rank or scale.
    """
    from lora_core.formats import peft_lora_config

    if name in adapter_names(base):
        raise ValueError(f"adapter {name!r} already exists; delete it or pick another name")
    alphas = alphas or {}
    state = adapter_state(base)
    try:
        for component in COMPONENTS:
            modules = {key.split(".", 1)[1]: (f.rank, alphas.get(key, f.scale * f.rank))
                       for key, f in factors.items() if key.startswith(component + ".")}
            if modules:
                _add_peft_adapter(getattr(base, component), name, peft_lora_config(modules))
        _fill_adapter(tuner_layers(base), name, factors)
    except ValueError:
        remove_adapters(base, [name])
        raise
    finally:
        restore_adapter_state(base, state)


def _fill_adapter(layers: Mapping[str, torch.nn.Module], name: str, factors: Mapping[str, LoraFactors]) -> None:
    """Copy the factors into adapter ``name``'s layers; check that peft targeted exactly these
    modules at exactly these ranks and scales."""
    extra = sorted(key for key, layer in layers.items() if name in layer.lora_A and key not in factors)
    if extra:
        raise ValueError(f"peft also put adapter {name!r} on {len(extra)} other module(s), e.g. {extra[:2]}")
    with torch.no_grad():
        for key, f in factors.items():
            layer = layers.get(key)
            if layer is None or name not in layer.lora_A:
                raise ValueError(f"module {key}: peft put no LoRA layer there")
            if layer.r[name] != f.rank or not math.isclose(_unit_scale(layer, name), f.scale, rel_tol=1e-12):
                raise ValueError(f"module {key}: peft would apply rank {layer.r[name]} and scale "
                                 f"{_unit_scale(layer, name):g}, not rank {f.rank} and scale {f.scale:g}")
            for weight, factor, what in ((layer.lora_A[name].weight, f.down, "down"),
                                         (layer.lora_B[name].weight, f.up, "up")):
                if factor.flatten(1).shape != weight.flatten(1).shape:
                    raise ValueError(f"module {key}: LoRA {what} factor of shape {tuple(factor.shape)} does not fit "
                                     f"the layer's {tuple(weight.shape)}")
                weight.copy_(factor.reshape(weight.shape))


def interpolate_adapters(base, name_a: str, name_b: str, a: float, new_name: str) -> dict[str, LoraFactors]:
    """Add ``new_name`` = weight-space mix ``a * name_a + (1 - a) * name_b`` (see :func:`interpolate_factors`)."""
    mixed = interpolate_factors(lora_factors(base, name_a), lora_factors(base, name_b), a)
    add_adapter_from_factors(base, new_name, mixed)
    return mixed


def merge_adapters(base, weights: Mapping[str, float], new_name: str, combination_type: str = "cat",
                   svd_rank: int | None = None) -> dict[str, LoraFactors]:
    """Add ``new_name`` merging the named adapters at these weights (rules in :func:`merge_factors`)."""
    factor_sets = [lora_factors(base, name) for name in weights]
    merged = merge_factors(factor_sets, list(weights.values()), combination_type, svd_rank)
    add_adapter_from_factors(base, new_name, merged)
    return merged


# ---- fusing into the base weights --------------------------------------------------------------

class FusedAdapters:
    """Adapters fused into the base weights; ``unfuse()`` restores the saved originals bit-exactly.

    peft's own unmerge subtracts the delta again, which is off by rounding; we keep copies instead.
    Use as a context manager: ``with fuse_adapters(base, {"ink": 0.8}): ...``.
    """

    def __init__(self, base, weights: Mapping[str, float]):
        self.base = base
        self.state = adapter_state(base)
        set_adapter_weights(base, weights)
        self.originals = {}
        for key, layer in tuner_layers(base).items():
            names = [n for n in weights if n in layer.lora_A]
            if names:
                self.originals[key] = layer.get_base_layer().weight.detach().clone()
                layer.merge(adapter_names=names)

    def unfuse(self) -> None:
        layers = tuner_layers(self.base)
        with torch.no_grad():
            for key, original in self.originals.items():
                layers[key].get_base_layer().weight.copy_(original)
                layers[key].merged_adapters.clear()
        self.originals = {}
        restore_adapter_state(self.base, self.state)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unfuse()


def fuse_adapters(base, weights: Mapping[str, float]) -> FusedAdapters:
    """Fuse ``sum_i w_i s_i B_i A_i`` into the base weights in place (fast inference, one matmul)."""
    return FusedAdapters(base, weights)


def fused_base(base, weights: Mapping[str, float]):
    """A new plain ``BaseModel`` (no LoRA layers) with the blend fused in; ``base`` is untouched.

    Save it with ``.save(folder)`` (diffusers layout) or ``formats.save_single_file``.
    """
    from lora_core.models import BaseModel

    _check_present(base, list(weights))
    warn_extreme_weights(weights)
    deltas = blend_deltas([lora_factors(base, n) for n in weights], list(weights.values()))
    components = {}
    for component in COMPONENTS:
        model = copy.deepcopy(getattr(base, component))
        with torch.no_grad():
            for key, layer in tuner_layers_of(model).items():
                if f"{component}.{key}" in deltas:
                    weight = layer.get_base_layer().weight
                    weight.add_(deltas[f"{component}.{key}"].to(weight.dtype))
        _unwrap(model)
        components[component] = model
    return BaseModel(base.tokenizer, components["text_encoder"], base.vae, components["unet"],
                     base.noise_scheduler, source=f"{base.source}+fused({dict(weights)})",
                     random_weights=base.random_weights)


def _unwrap(model: torch.nn.Module) -> None:
    """Replace every LoRA layer by its plain base layer and forget the peft config."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    model._hf_peft_config_loaded = None


def tuner_layers_of(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


# ---- adapters for tests, docs and demos ----------------------------------------------------------

def add_random_adapter(base, name: str, rank: int, alpha: float, seed: int,
                       targets: Sequence[str] = ATTENTION_TARGETS, std: float = 0.05,
                       text_encoder: bool = False) -> None:
    """Attach a LoRA with seeded random nonzero A and B (an untrained adapter has B = 0)."""
    from peft import LoraConfig

    generator = torch.Generator().manual_seed(seed)
    state = adapter_state(base)
    _add_peft_adapter(base.unet, name, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)))
    if text_encoder:
        _add_peft_adapter(base.text_encoder, name,
                          LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for layer in tuner_layers(base).values():
            if name in layer.lora_A:
                for factor in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    factor.copy_(torch.randn(factor.shape, generator=generator) * std)
    restore_adapter_state(base, state)

