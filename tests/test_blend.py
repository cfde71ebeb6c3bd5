"""Blending, interpolation, merging and fusing against explicit delta-W computations and peft."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_core import blend
from lora_core.blend import LoraFactors, lora_factors, set_adapter_weights, tuner_layers
from lora_core.models import load_base


@pytest.fixture(scope="module")
def base():
    model = load_base("tiny-random", seed=0)
    blend.add_random_adapter(model, "ink", rank=4, alpha=8, seed=1)    # scale 2
    blend.add_random_adapter(model, "moss", rank=4, alpha=4, seed=2)   # scale 1
    blend.add_random_adapter(model, "wide", rank=8, alpha=8, seed=3)
    blend.add_random_adapter(model, "qonly", rank=4, alpha=4, seed=4, targets=("to_q",))
    return model


def unet_output(model):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, 128, generator=generator)
    with torch.no_grad():
        return model.unet(latents, 10, encoder_hidden_states=text).sample


def layer_inputs(layer):
    return torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(5))


def test_weights_one_and_zero_equal_the_single_adapter_exactly(base):
    state = blend.adapter_state(base)
    set_adapter_weights(base, {"ink": 1.0})
    single = unet_output(base)
    set_adapter_weights(base, {"ink": 1.0, "moss": 0.0})
    blended = unet_output(base)
    set_adapter_weights(base, {})
    plain = unet_output(base)
    blend.restore_adapter_state(base, state)
    assert torch.equal(single, blended)
    assert not torch.equal(single, plain)


def test_output_space_blend_equals_explicit_delta_w(base):
    weights = {"ink": 0.7, "moss": -0.4}
    deltas = blend.blend_deltas([lora_factors(base, n) for n in weights], list(weights.values()))
    state = blend.adapter_state(base)
    set_adapter_weights(base, weights)
    layers = tuner_layers(base)
    with torch.no_grad():
        for key, delta in deltas.items():
            layer = layers[key]
            x = layer_inputs(layer)
            base_weight = layer.get_base_layer().weight
            expected = torch.nn.functional.linear(x, base_weight + delta, layer.get_base_layer().bias)
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
            # the delta is sum_i w_i (alpha_i / r_i) B_i A_i, written out by hand
            ink, moss = layer.lora_A["ink"].weight, layer.lora_A["moss"].weight
            by_hand = (0.7 * (8 / 4) * layer.lora_B["ink"].weight @ ink
                       - 0.4 * (4 / 4) * layer.lora_B["moss"].weight @ moss)
            torch.testing.assert_close(delta, by_hand)
    blend.restore_adapter_state(base, state)


def test_interpolation_follows_its_formula_and_differs_from_blending(base):
    a = 0.3
    blend.interpolate_adapters(base, "ink", "moss", a, "mix_03")
    ink, moss, mixed = lora_factors(base, "ink"), lora_factors(base, "moss"), lora_factors(base, "mix_03")
    layers = tuner_layers(base)
    for key in ink:
        # scales differ (2 vs 1): each factor carries sqrt(scale), the mix has scale 1
        expected_down = a * math.sqrt(2) * ink[key].down + (1 - a) * moss[key].down
        expected_up = a * math.sqrt(2) * ink[key].up + (1 - a) * moss[key].up
        torch.testing.assert_close(mixed[key].down, expected_down)
        torch.testing.assert_close(mixed[key].up, expected_up)
        assert mixed[key].scale == 1.0
    gap = blend.interpolation_gap(ink, moss, a).set_index("module")
    for key in list(ink)[:8]:
        layer = layers[key]
        brute = layer.get_delta_weight("mix_03") - (a * layer.get_delta_weight("ink") + (1 - a) * layer.get_delta_weight("moss"))
        assert gap.loc[key, "gap_norm"] == pytest.approx(float(torch.linalg.norm(brute)), rel=1e-4)
    assert (gap.relative_gap > 1e-3).all()


def test_interpolation_gap_is_exactly_zero_where_it_should_be(base):
    ink, moss = lora_factors(base, "ink"), lora_factors(base, "moss")
    assert (blend.interpolation_gap(ink, moss, 0.0).gap_norm == 0).all()
    assert (blend.interpolation_gap(ink, moss, 1.0).gap_norm == 0).all()
    assert (blend.interpolation_gap(ink, ink, 0.3).gap_norm == 0).all()
    # a in {0, 1} reproduces each adapter: exactly for equal scales, up to sqrt rounding otherwise
    key = next(iter(ink))
    assert torch.equal(blend.interpolate_factors(ink, ink, 1.0)[key].delta(), ink[key].delta())
    torch.testing.assert_close(blend.interpolate_factors(ink, moss, 1.0)[key].delta(), ink[key].delta(),
                               rtol=1e-5, atol=1e-8)


def test_interpolation_refuses_other_ranks_and_targets(base):
    with pytest.raises(ValueError, match="rank differs at unet.*4 vs 8.*'cat' or 'svd'"):
        blend.interpolate_factors(lora_factors(base, "ink"), lora_factors(base, "wide"), 0.5)
    with pytest.raises(ValueError, match="target different modules"):
        blend.interpolate_factors(lora_factors(base, "ink"), lora_factors(base, "qonly"), 0.5)
    with pytest.raises(ValueError, match="rank differs"):
        blend.merge_factors([lora_factors(base, "ink"), lora_factors(base, "wide")], [1, 1], "linear")


def test_merges_cat_and_svd_are_the_blend_linear_is_not(base):
    weights = {"ink": 0.6, "wide": 0.5}
    sets = [dict(list(lora_factors(base, n).items())[:6]) for n in weights]  # a few modules keep it fast
    exact = blend.blend_deltas(sets, list(weights.values()))
    cat = blend.merge_factors(sets, list(weights.values()), "cat")
    svd = blend.merge_factors(sets, list(weights.values()), "svd", svd_rank=12)
    key = next(iter(exact))
    assert cat[key].rank == 12 and svd[key].rank == 12
    for merged in (cat, svd):
        for k in exact:
            torch.testing.assert_close(merged[k].delta(), exact[k], rtol=1e-4, atol=1e-6)
    truncated = blend.merge_factors(sets, list(weights.values()), "svd")  # default rank max(4, 8)
    assert truncated[key].rank == 8
    with pytest.raises(ValueError, match="combination_type 'ties'"):
        blend.merge_factors(sets, [1, 1], "ties")
    same_rank = [dict(list(lora_factors(base, n).items())[:6]) for n in ("ink", "moss")]
    linear = blend.merge_factors(same_rank, [0.5, 0.5], "linear")
    blended = blend.blend_deltas(same_rank, [0.5, 0.5])
    assert all(not torch.allclose(linear[k].delta(), blended[k], atol=1e-4) for k in blended)  # cross terms


@pytest.mark.parametrize("combination_type", ["linear", "cat", "svd"])
def test_merge_rules_match_peft_add_weighted_adapter(combination_type):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]), adapter_name="first")
    peft_model.add_adapter("second", LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2"]))
    layers = {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            for name in ("first", "second"):
                for factor in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    factor.copy_(torch.randn(factor.shape, generator=generator))
    factors = [{k: LoraFactors(l.lora_A[n].weight.detach(), l.lora_B[n].weight.detach(), l.scaling[n])
                for k, l in layers.items()} for n in ("first", "second")]
    ours = blend.merge_factors(factors, [0.7, -0.5], combination_type)
    peft_model.add_weighted_adapter(["first", "second"], [0.7, -0.5], "merged", combination_type=combination_type)
    for key, layer in layers.items():
        torch.testing.assert_close(ours[key].delta(), layer.get_delta_weight("merged"), rtol=1e-5, atol=1e-6)


def test_extreme_weights_warn(base):
    state = blend.adapter_state(base)
    with pytest.warns(UserWarning, match=r"outside \[-2, 2\].*'ink': 2.5"):
        set_adapter_weights(base, {"ink": 2.5})
    blend.restore_adapter_state(base, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_adapter_weights(base, {"ink": -1.5})
    blend.restore_adapter_state(base, state)
    with pytest.raises(KeyError, match="'nope' not loaded; present: 'ink'"):
        set_adapter_weights(base, {"nope": 1.0})


def test_fuse_then_unfuse_restores_base_weights_bit_exactly(base):
    weights = {"ink": 0.8, "moss": 0.5}
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    state_before = blend.adapter_state(base)
    set_adapter_weights(base, weights)
    active = unet_output(base)
    blend.restore_adapter_state(base, state_before)
    with blend.fuse_adapters(base, weights):
        fused = unet_output(base)
        changed = [k for k, v in base.unet.state_dict().items() if not torch.equal(v, before[k])]
        assert changed and all(k.endswith("base_layer.weight") for k in changed)
    torch.testing.assert_close(fused, active, rtol=1e-4, atol=1e-5)
    after = base.unet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert blend.adapter_state(base) == state_before
    assert not any(layer.merged for layer in tuner_layers(base).values())


def test_fused_base_is_a_plain_model_that_saves_and_carries_the_blend(base, tmp_path):
    from lora_core.formats import save_lora_diffusers, save_single_file

    weights = {"ink": 0.5}
    state = blend.adapter_state(base)
    set_adapter_weights(base, weights)
    active = unet_output(base)
    blend.restore_adapter_state(base, state)
    plain = blend.fused_base(base, weights)
    assert blend.tuner_layers(plain) == {}
    torch.testing.assert_close(unet_output(plain), active, rtol=1e-4, atol=1e-5)
    assert blend.adapter_state(base) == state
    folder = plain.save(tmp_path / "fused")
    reference = plain.unet.state_dict()
    for reloaded in (load_base(str(folder)),
                     load_base(str(save_single_file(plain, tmp_path / "fused.safetensors")), config=folder)):
        assert all(torch.equal(v, reference[k]) for k, v in reloaded.unet.state_dict().items())
    # another LoRA, applied to that other checkpoint (single file) from a diffusers-layout file
    lora_path = save_lora_diffusers(tmp_path / "moss.safetensors", base.unet, adapter_name="moss")
    blend.load_lora(reloaded, lora_path, "moss")
    moss, layers = lora_factors(base, "moss"), tuner_layers(base)
    for key, factors in lora_factors(reloaded, "moss").items():
        torch.testing.assert_close(factors.delta(), moss[key].delta())
        on_other_base = tuner_layers(reloaded)[key].get_base_layer().weight
        assert not torch.equal(on_other_base, layers[key].get_base_layer().weight)


def write_kohya_file(path, factors: dict[str, LoraFactors]):
    """An sd-scripts-style file written by hand (independent of lora_core.formats)."""
    tensors = {}
    for key, f in factors.items():
        component, module = key.split(".", 1)
        name = ("lora_unet_" if component == "unet" else "lora_te_text_model_") + module.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = f.down.contiguous()
        tensors[f"{name}.lora_up.weight"] = f.up.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(f.scale * f.rank)
    save_file(tensors, str(path), metadata={"ss_network_dim": "4", "ss_network_alpha": "8"})
    return path


def test_external_kohya_file_loads_and_merges_one_to_one(base, tmp_path):
    ink = lora_factors(base, "ink")
    path = write_kohya_file(tmp_path / "community_ink.safetensors", ink)
    state = blend.adapter_state(base)
    blend.load_lora(base, path, "kohya_ink")
    after = blend.adapter_state(base)
    assert all(after.layers[key][0] == state.layers[key][0] for key in state.layers)  # nothing activated
    loaded = lora_factors(base, "kohya_ink")
    assert loaded.keys() == ink.keys()
    for key in ink:  # alpha 8, rank 4 survives the kohya layout
        torch.testing.assert_close(loaded[key].delta(), ink[key].delta())
    from lora_core.formats import save_lora_diffusers

    # the diffusers layout keeps alpha 8 != rank 4 too
    blend.load_lora(base, save_lora_diffusers(tmp_path / "ink.safetensors", base.unet, adapter_name="ink"), "diff_ink")
    for key, factors in lora_factors(base, "diff_ink").items():
        assert factors.scale == 2.0
        torch.testing.assert_close(factors.delta(), ink[key].delta())
    merged = blend.merge_adapters(base, {"kohya_ink": 1.0, "moss": 1.0}, "ink_moss", combination_type="cat")
    exact = blend.blend_deltas([ink, lora_factors(base, "moss")], [1.0, 1.0])
    for key in exact:
        torch.testing.assert_close(merged[key].delta(), exact[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tuner_layers(base)[key].get_delta_weight("ink_moss"), exact[key],
                                   rtol=1e-5, atol=1e-6)


def test_sdxl_shaped_lora_is_refused_with_a_summary(base, tmp_path):
    from lora_core.formats import LoraKeyError

    sdxl = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 640),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(640, 4),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(4.0)}
    save_file(sdxl, str(tmp_path / "sdxl.safetensors"))
    names = blend.adapter_names(base)
    with pytest.raises(LoraKeyError, match="sdxl.safetensors: kohya LoRA does not fit.*0 of 1 LoRA modules match"):
        blend.load_lora(base, tmp_path / "sdxl.safetensors", "sdxl")
    assert blend.adapter_names(base) == names


def test_gap_sweep_plots_zero_at_the_ends(base):
    from lora_core import plots

    sweep = blend.interpolation_gap_sweep(lora_factors(base, "ink"), lora_factors(base, "moss"), [0.0, 0.25, 0.5, 1.0])
    figure = plots.line_plot(sweep, x="a", y="relative_gap", ylabel="||interp - blend|| / ||blend||")
    xs, ys = figure.axes[0].lines[0].get_data()
    assert list(xs) == [0.0, 0.25, 0.5, 1.0]
    assert ys[0] == ys[-1] == 0.0
    assert ys[2] == pytest.approx(sweep.query("a == 0.5").relative_gap.mean())
    # the cross terms scale with a (1 - a): 0.25 at a = 0.5 against 0.1875 at a = 0.25
    ratio = sweep.query("a == 0.5").gap_norm.values / sweep.query("a == 0.25").gap_norm.values
    np.testing.assert_allclose(ratio, 0.25 / 0.1875, rtol=1e-5)
