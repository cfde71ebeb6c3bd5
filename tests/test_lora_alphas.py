"""Every module of a LoRA file gets its own alpha / rank, through every way a file is used.

The files are written by hand here (sd-scripts' kohya keys; diffusers keys with peft's config in
``lora_adapter_metadata``), and the reference is a hand merge ``W + (alpha / rank) up @ down`` in
float64 from the same tensors, independent of lora_core and peft. Before the fix a kohya file
whose alphas differ loaded every module at the most common alpha (diffusers' alpha_pattern keys
matched no module; peft only warned).
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_core import blend
from lora_core.generate import Cell, generate_cells

pytestmark = pytest.mark.usefixtures("one_thread")

ODD_MODULE = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
ATTENTION, FEED_FORWARD, CONVOLUTION = ("to_q", "to_k", "to_v", "to_out.0"), ("ff.net.0.proj", "ff.net.2"), ("conv1",)
TEXT_ENCODER = ("q_proj", "fc1")


def _group(path: str) -> str | None:
    for name, suffixes in (("attention", ATTENTION), ("feed_forward", FEED_FORWARD), ("convolution", CONVOLUTION),
                           ("text_encoder", TEXT_ENCODER)):
        if path.endswith(suffixes):
            return name
    return None


# case -> group -> (rank, alpha); "odd" is one to_q at alpha 1 among modules at alpha 2
CASES = {"three_alphas": {"attention": (4, 2.0), "feed_forward": (4, 8.0), "convolution": (2, 1.0),
                          "text_encoder": (2, 3.0)},
         "odd_one_out": {"attention": (4, 2.0), "feed_forward": (4, 2.0), "convolution": (4, 2.0)}}


def lora_spec(base, case: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``"unet.<path>"`` -> (down, up, alpha), seeded, for the modules of the case's groups."""
    generator, spec = torch.Generator().manual_seed(7), {}
    for component in ("unet", "text_encoder"):
        for path, layer in getattr(base, component).named_modules():
            group = _group(path) if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) else None
            if group is None or group not in CASES[case]:
                continue
            rank, alpha = CASES[case][group]
            odd = case == "odd_one_out" and path == ODD_MODULE
            # the odd module's up factor is large so that its scale shows in a 32-pixel image
            alpha, std = (1.0, 4.0) if odd else (alpha, 0.2)
            kernel = tuple(layer.weight.shape[2:])
            down = torch.randn(rank, layer.weight.shape[1], *kernel, generator=generator) * 0.2
            up = torch.randn(layer.weight.shape[0], rank, *(1,) * len(kernel), generator=generator) * std
            spec[f"{component}.{path}"] = (down, up, alpha)
    return spec


def hand_merge(base, spec) -> dict[str, torch.Tensor]:
    """``W + (alpha / rank) up @ down`` per module, in float64."""
    merged = {}
    for key, (down, up, alpha) in spec.items():
        component, path = key.split(".", 1)
        weight = getattr(base, component).get_submodule(path).weight.detach().double()
        delta = (up.double().flatten(1) @ down.double().flatten(1)).reshape(weight.shape)
        merged[key] = weight + alpha / down.shape[0] * delta
    return merged


def write_kohya(path, spec):
    """sd-scripts keys: lora_unet_<path with _>, lora_te_text_model_<path with _>, a float32 alpha each."""
    tensors = {}
    for key, (down, up, alpha) in spec.items():
        component, module = key.split(".", 1)
        name = ("lora_unet_" if component == "unet" else "lora_te_text_model_") + module.replace(".", "_")
        tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(alpha)})
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def write_diffusers(path, spec, case: str):
    """diffusers keys, and in ``lora_adapter_metadata`` the peft config per component (as diffusers'
    ``save_lora_weights`` writes it) that a user would have trained with: suffix patterns for whole
    groups, the module's full path for the odd one out."""
    from peft import LoraConfig

    configs = {"three_alphas": {"unet": dict(r=4, lora_alpha=2.0, target_modules=[*ATTENTION, *FEED_FORWARD, "conv1"],
                                             rank_pattern={"conv1": 2},
                                             alpha_pattern={"ff.net.0.proj": 8.0, "ff.net.2": 8.0, "conv1": 1.0}),
                                "text_encoder": dict(r=2, lora_alpha=3.0, target_modules=list(TEXT_ENCODER))},
               "odd_one_out": {"unet": dict(r=4, lora_alpha=2.0, target_modules=[*ATTENTION, *FEED_FORWARD, "conv1"],
                                            alpha_pattern={ODD_MODULE: 1.0})}}
    metadata = {f"{component}.{option}": sorted(value) if isinstance(value, set) else value
                for component, options in configs[case].items()
                for option, value in LoraConfig(**options).to_dict().items()}
    tensors = {}
    for key, (down, up, _) in spec.items():
        tensors.update({f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up})
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(metadata)})
    return path


@pytest.fixture(scope="module", params=[(case, layout) for case in CASES for layout in ("kohya", "diffusers")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def lora_file(request, tiny_base, tmp_path_factory):
    case, layout = request.param
    spec = lora_spec(tiny_base, case)
    folder = tmp_path_factory.mktemp(f"{case}-{layout}")
    path = (write_kohya(folder / "style.safetensors", spec) if layout == "kohya"
            else write_diffusers(folder / "pytorch_lora_weights.safetensors", spec, case))
    assert {alpha for _, _, alpha in spec.values()} == ({1.0, 2.0, 3.0, 8.0} if case == "three_alphas" else {1.0, 2.0})
    return path, spec, hand_merge(tiny_base, spec)


@pytest.fixture()
def base(tiny_base):
    return copy.deepcopy(tiny_base)


def _layer_output(layer, weight, x):
    if isinstance(layer, torch.nn.Conv2d):
        return torch.nn.functional.conv2d(x, weight, layer.bias, layer.stride, layer.padding)
    return torch.nn.functional.linear(x, weight, layer.bias)


def test_load_lora_gives_every_module_its_own_scale(base, lora_file):
    path, spec, merged = lora_file
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft's "alpha_pattern keys did not match"
        blend.load_lora(base, path, "style")
    layers = blend.tuner_layers(base)
    assert layers.keys() >= spec.keys() and sum("style" in layer.lora_A for layer in layers.values()) == len(spec)
    for key, (down, _, alpha) in spec.items():
        assert layers[key].scaling["style"] == pytest.approx(alpha / down.shape[0], rel=1e-12), key
    blend.set_adapter_weights(base, {"style": 1.0})
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, weight in merged.items():
            layer = layers[key].get_base_layer()
            shape = (2, layer.in_channels, 6, 6) if isinstance(layer, torch.nn.Conv2d) else (2, layer.in_features)
            x = torch.randn(shape, generator=generator)
            expected = _layer_output(layer, weight.float(), x)
            torch.testing.assert_close(layers[key](x), expected, rtol=1e-4, atol=1e-5, msg=key)


def test_fusing_the_file_gives_the_hand_merge(base, lora_file):
    path, spec, merged = lora_file
    blend.load_lora(base, path, "style")
    with blend.fuse_adapters(base, {"style": 1.0}):
        layers = blend.tuner_layers(base)
        for key, weight in merged.items():
            torch.testing.assert_close(layers[key].get_base_layer().weight.double(), weight, rtol=0, atol=1e-6,
                                       msg=key)
    plain = blend.fused_base(base, {"style": 1.0})
    for key, weight in merged.items():
        component, module = key.split(".", 1)
        fused = getattr(plain, component).get_submodule(module).weight.double()
        torch.testing.assert_close(fused, weight, rtol=0, atol=1e-6, msg=key)


def _with_weights(tiny_base, merged):
    model = copy.deepcopy(tiny_base)
    with torch.no_grad():
        for key, weight in merged.items():
            component, path = key.split(".", 1)
            getattr(model, component).get_submodule(path).weight.copy_(weight)
    return model


def test_generating_with_the_file_equals_generating_with_the_hand_merge(tiny_base, lora_file):
    path, spec, merged = lora_file
    cell = dict(prompt="a red cat face", seed=3, steps=3, guidance_scale=4.0)
    with_file = generate_cells(copy.deepcopy(tiny_base), [Cell(**cell, adapters=((str(path), 1.0),))]).images[0]
    by_hand = generate_cells(_with_weights(tiny_base, merged), [Cell(**cell)]).images[0]
    majority = {key: (down, up, 2.0) for key, (down, up, _) in spec.items()}  # every module at alpha 2
    at_one_alpha = generate_cells(_with_weights(tiny_base, hand_merge(tiny_base, majority)), [Cell(**cell)]).images[0]
    pixels = [np.asarray(image, dtype=np.int16) for image in (with_file, by_hand, at_one_alpha)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1  # unfused vs fused: float rounding only
    assert np.abs(pixels[0] - pixels[2]).max() > 4   # the per-module alphas matter at this scale


# ---- the project's own files, and refusing what cannot load at the right scale --------------

def test_own_kohya_and_diffusers_exports_round_trip_per_module_alphas(base, tmp_path):
    """save_lora_kohya(alphas=...) and save_lora_diffusers of a peft LoRA whose modules differ in
    rank and alpha reload (also re-saved after loading) with every module's delta."""
    from peft import LoraConfig, get_peft_model_state_dict

    from lora_core.formats import save_lora_diffusers, save_lora_kohya

    trained = copy.deepcopy(base)
    blend._add_peft_adapter(trained.unet, "trained", LoraConfig(
        r=4, lora_alpha=2.0, target_modules=["to_q", "to_k", "ff.net.2", "conv1"], rank_pattern={"conv1": 2},
        alpha_pattern={"ff.net.2": 8.0, "conv1": 1.0, ODD_MODULE: 0.5}, init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, parameter in trained.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    layers = blend.tuner_layers(trained)
    expected = blend.lora_factors(trained, "trained")
    assert {round(f.scale, 6) for f in expected.values()} == {0.125, 0.5, 2.0}
    assert layers[f"unet.{ODD_MODULE}"].scaling["trained"] == 0.125
    alphas = {key.split(".", 1)[1]: layer.lora_alpha["trained"] for key, layer in layers.items()}
    files = {"kohya": save_lora_kohya(tmp_path / "own_kohya.safetensors",
                                      get_peft_model_state_dict(trained.unet, adapter_name="trained"), None, alphas),
             "diffusers": save_lora_diffusers(tmp_path / "own_diffusers.safetensors", trained.unet, None, "trained")}
    for layout, path in files.items():
        blend.load_lora(base, path, layout)
        resaved = save_lora_diffusers(tmp_path / f"resaved_{layout}.safetensors", base.unet, None, layout)
        blend.load_lora(base, resaved, f"resaved_{layout}")
        for name in (layout, f"resaved_{layout}"):
            loaded = blend.lora_factors(base, name)
            assert loaded.keys() == expected.keys()
            for key, factors in expected.items():
                assert loaded[key].scale == factors.scale, (name, key)
                torch.testing.assert_close(loaded[key].delta(), factors.delta(), rtol=0, atol=1e-7)


def _diffusers_lora(path, config: dict, extra: dict | None = None):
    down, up = torch.ones(4, 64) * 0.1, torch.ones(64, 4) * 0.1
    tensors = {f"unet.{ODD_MODULE}.lora_A.weight": down, f"unet.{ODD_MODULE}.lora_B.weight": up, **(extra or {})}
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(config)})
    return path


REFUSED = {
    "dora": ({"unet.r": 4, "unet.lora_alpha": 4, "unet.use_dora": True}, None,
             rf"module unet\.{ODD_MODULE}: its adapter config sets use_dora"),
    "rslora": ({"unet.r": 4, "unet.lora_alpha": 4, "unet.use_rslora": True}, None, "sets use_rslora"),
    "rank": ({"unet.r": 8, "unet.lora_alpha": 4}, None, "its tensors have rank 4 but its adapter config says rank 8"),
    "alpha_zero": ({}, {f"unet.{ODD_MODULE}.alpha": torch.tensor(0.0)}, "alpha 0 means scale 1 to sd-scripts but"),
    "alpha_vector": ({}, {f"unet.{ODD_MODULE}.alpha": torch.ones(2)}, "its alpha holds 2 numbers, not one"),
    "magnitude": ({"unet.r": 4, "unet.lora_alpha": 4}, {f"unet.{ODD_MODULE}.lora_magnitude_vector": torch.ones(64)},
                  r"1 tensors are not LoRA down/up/alpha tensors and would be dropped, e\.g\. \['unet\.down_blocks"),
}


@pytest.mark.parametrize("what", REFUSED)
def test_a_file_whose_scale_cannot_be_applied_is_refused_by_name_and_nothing_loads(base, tmp_path, what):
    config, extra, message = REFUSED[what]
    path = _diffusers_lora(tmp_path / "odd.safetensors", config, extra)
    with pytest.raises(ValueError, match=r"odd\.safetensors: .*" + message):
        blend.load_lora(base, path, "odd")
    assert blend.adapter_names(base) == [] and blend.tuner_layers(base) == {}


def test_peft_giving_a_module_another_scale_is_refused_not_loaded(base, tmp_path, monkeypatch):
    """What diffusers' loader does with an odd kohya alpha (pattern keys that match no module),
    simulated: the loader checks what peft applies and refuses, naming the module."""
    from peft import LoraConfig

    import lora_core.formats

    spec = lora_spec(base, "odd_one_out")
    path = write_kohya(tmp_path / "odd.safetensors", spec)
    monkeypatch.setattr(lora_core.formats, "peft_lora_config", lambda modules: LoraConfig(
        r=4, lora_alpha=2.0, target_modules=sorted(modules),
        alpha_pattern={f"{ODD_MODULE.replace('.to_q', '.processor.to_q')}_lora.down.weight": 1.0}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=rf"odd\.safetensors: module unet\.{ODD_MODULE}: peft would apply rank 4 "
                                             r"and scale 0\.5, not rank 4 and scale 0\.25"):
            blend.load_lora(base, path, "odd")
    assert blend.adapter_names(base) == [] and blend.tuner_layers(base) == {}


def test_peft_layout_reads_the_config_beside_it_or_refuses(base, tmp_path):
    down, up = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), torch.ones(64, 4)
    folder = tmp_path / "peft_adapter"
    folder.mkdir()
    path = folder / "adapter_model.safetensors"
    save_file({f"base_model.model.{ODD_MODULE}.lora_A.weight": down,
               f"base_model.model.{ODD_MODULE}.lora_B.weight": up}, str(path))
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: module base_model\.model\.down_blocks.*"
                                         r"keeps its alphas in adapter_config\.json beside it, and there is none"):
        blend.load_lora(base, path, "peft")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "alpha_pattern": {"attn1.to_q": 1}}))
    blend.load_lora(base, path, "peft")
    (factors,) = blend.lora_factors(base, "peft").values()
    assert factors.scale == 0.25
    torch.testing.assert_close(factors.delta(), 0.25 * up @ down)
