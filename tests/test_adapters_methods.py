"""Textual inversion, DreamBooth and LyCORIS adapters on the tiny random model.

Each method trains a few steps on one fixed batch (fixed noise and timesteps, so the loss is a
deterministic function of the weights), changes only what it should, and its export loads back
into a fresh model with identical outputs.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from lora_core.adapters import get_adapter, trainable_parameters
from lora_core.adapters.dreambooth import DreamBoothOptions, generate_class_images
from lora_core.adapters.lycoris import ALGOS, LycorisOptions, load_lycoris
from lora_core.adapters.textual_inversion import TextualInversionOptions
from lora_core.models import load_base

PROMPT = "a red heart emoji"
METADATA = {"lsl_config_hash": "abc123", "ss_seed": "0"}


def train_config(method: str, options, learning_rate: float, text_encoder_learning_rate=None):
    """The ``TrainConfig`` fields adapters read."""
    return SimpleNamespace(method=method, options=options, learning_rate=learning_rate,
                           text_encoder_learning_rate=text_encoder_learning_rate, seed=0, resolution=32)


def encode_text(base, captions):
    ids = base.tokenizer(captions, padding="max_length", max_length=base.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return base.text_encoder(ids)[0]


def fixed_batch(base, batch_size=2):
    generator = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        pixels=torch.rand(batch_size, 3, 32, 32, generator=generator) * 2 - 1,
        noise=torch.randn(batch_size, 4, 8, 8, generator=generator),
        timesteps=torch.randint(100, 900, (batch_size,), generator=generator))


def diffusion_loss(base, adapter, batch, captions):
    latents = base.vae.encode(batch.pixels).latent_dist.mean * base.vae.config.scaling_factor
    noisy = base.noise_scheduler.add_noise(latents, batch.noise, batch.timesteps)
    hidden = encode_text(base, [adapter.caption(c) for c in captions])
    pred = base.unet(noisy, batch.timesteps, hidden).sample
    return torch.nn.functional.mse_loss(pred, batch.noise)


def train_steps(base, adapter, captions, steps=3):
    """The engine's order of calls, in a plain loop; returns the loss before each step."""
    adapter.check(base)
    adapter.attach(base)
    groups = adapter.param_groups(base)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups],
                                  weight_decay=1e-2)
    batch, losses = fixed_batch(base, len(captions)), []
    for _ in range(steps):
        loss = diffusion_loss(base, adapter, batch, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            adapter.after_optimizer_step(base)
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(diffusion_loss(base, adapter, batch, captions).item())
    return losses


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def unet_output(base, prompt=PROMPT):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        return base.unet(latents, torch.tensor([500]), encode_text(base, [prompt])).sample


def pipeline_image(base, prompt):
    pipe = base.pipeline()
    return pipe(prompt, num_inference_steps=1, guidance_scale=3.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


# -- textual inversion -----------------------------------------------------------------------

TI = TextualInversionOptions(placeholder_token="<emo>", initializer_token="heart", num_vectors=2,
                             trigger_word="emoji")
TI_CAPTIONS = [PROMPT, "a blue cat emoji"]


@pytest.fixture(scope="module")
def trained_ti():
    """A textual inversion trained a few steps, with the untouched base's state beside it."""
    base = load_base("tiny-random")
    before = SimpleNamespace(
        vocab_size=len(base.tokenizer),
        embeddings=base.text_encoder.get_input_embeddings().weight.detach().clone(),
        initializer_id=base.tokenizer.encode("heart", add_special_tokens=False)[0],
        unet=snapshot(base.unet), vae=snapshot(base.vae), text_encoder=snapshot(base.text_encoder))
    adapter = get_adapter("textual_inversion")(train_config("textual_inversion", TI, 5e-2))
    losses = train_steps(base, adapter, TI_CAPTIONS)
    return SimpleNamespace(base=base, adapter=adapter, losses=losses, before=before)


def test_textual_inversion_trains_only_the_new_rows_and_restores_the_others_bit_exactly(trained_ti):
    base, adapter, losses, before = trained_ti.base, trained_ti.adapter, trained_ti.losses, trained_ti.before
    vocab_size, embeddings_before = before.vocab_size, before.embeddings
    initializer = embeddings_before[before.initializer_id]
    frozen = {"unet": before.unet, "vae": before.vae}
    encoder_before = before.text_encoder

    weight = adapter.embedding(base).weight
    assert weight.shape[0] == len(base.tokenizer) == vocab_size + 2
    assert base.tokenizer.convert_ids_to_tokens(adapter.token_ids) == ["<emo>", "<emo>_1"]
    assert adapter.trained_parameter_count(base) == 2 * weight.shape[1]  # the new rows, not the matrix
    assert torch.equal(weight[:vocab_size], embeddings_before)  # AdamW moved them; restored exactly
    for row in weight[vocab_size:]:
        assert not torch.equal(row, initializer)
    assert losses[-1] < losses[0]
    assert all(changed_keys(frozen[name], getattr(base, name)) == set() for name in frozen)
    assert changed_keys(encoder_before, base.text_encoder) == {"embeddings.token_embedding.weight"}


def test_textual_inversion_captions_put_every_vector_in_place_of_the_trigger_word():
    adapter = get_adapter("textual_inversion")(train_config("textual_inversion", TI, 1e-3))
    assert adapter.caption("an emoji of an emoji-like heart") == "an <emo> <emo>_1 of an <emo> <emo>_1-like heart"
    appended = get_adapter("textual_inversion")(train_config("textual_inversion", TI.replace(trigger_word=""), 1e-3))
    assert appended.caption("a red heart") == "a red heart, <emo> <emo>_1"
    with pytest.raises(ValueError, match="trigger_word 'emoji' is not in the caption 'a red heart'"):
        adapter.caption("a red heart")


def test_textual_inversion_export_loads_with_pipe_load_textual_inversion(trained_ti, tmp_path):
    base, adapter = trained_ti.base, trained_ti.adapter
    files = adapter.export(base, tmp_path, METADATA)
    expected_image = pipeline_image(base, "a photo of <emo>")
    expected_text = encode_text(base, ["a photo of <emo> <emo>_1"])

    for layout in ("diffusers", "a1111"):
        fresh = load_base("tiny-random")
        pipe = fresh.pipeline()
        pipe.load_textual_inversion(str(files[layout]), token="<emo>")
        prompt = pipe.maybe_convert_prompt("a photo of <emo>", fresh.tokenizer)
        assert prompt == "a photo of <emo> <emo>_1"
        with torch.no_grad():
            assert torch.equal(encode_text(fresh, [prompt]), expected_text)
    assert (pipeline_image(fresh, "a photo of <emo>") == expected_image).all()
    with safe_open(str(files["diffusers"]), framework="pt") as handle:
        assert list(handle.keys()) == ["<emo>"]
        assert handle.metadata()["lsl_config_hash"] == "abc123"
        assert handle.metadata()["lsl_num_vectors"] == "2"


def test_textual_inversion_state_dict_restores_into_a_fresh_attached_model(trained_ti):
    base, adapter = trained_ti.base, trained_ti.adapter
    fresh = load_base("tiny-random")
    other = get_adapter("textual_inversion")(train_config("textual_inversion", TI, 5e-2))
    other.attach(fresh)
    other.load_state_dict(fresh, adapter.state_dict(base))
    assert torch.equal(other.embedding(fresh).weight, adapter.embedding(base).weight)
    with pytest.raises(ValueError, match="must hold exactly 'text_encoder.learned_embeds'"):
        other.load_state_dict(fresh, {"unet.x": torch.zeros(1)})


@pytest.mark.parametrize("options, message", [
    (TI.replace(placeholder_token="sks"), "sks already in the tokenizer vocabulary"),
    (TI.replace(initializer_token="zzqxj"), "initializer_token 'zzqxj' must be a single token, but the "
                                            "tokenizer splits it into"),
])
def test_textual_inversion_refuses_bad_tokens(options, message):
    base = load_base("tiny-random")
    adapter = get_adapter("textual_inversion")(train_config("textual_inversion", options, 1e-3))
    with pytest.raises(ValueError, match=message):
        adapter.check(base)
    with pytest.raises(ValueError, match=message):
        adapter.attach(base)


def test_textual_inversion_refuses_a_placeholder_that_a_loaded_embedding_already_added():
    base = load_base("tiny-random")
    base.tokenizer.add_tokens(["<emo>_1"])
    adapter = get_adapter("textual_inversion")(train_config("textual_inversion", TI, 1e-3))
    with pytest.raises(ValueError, match="<emo>_1 already in the tokenizer vocabulary"):
        adapter.check(base)


def test_textual_inversion_options_validate():
    with pytest.raises(ValueError, match="num_vectors must be a positive integer, got 0"):
        TI.replace(num_vectors=0)
    with pytest.raises(ValueError, match="placeholder_token must be one non-empty word"):
        TI.replace(placeholder_token="<my style>")


# -- DreamBooth ----------------------------------------------------------------------------------

def test_dreambooth_fine_tunes_unet_and_text_encoder_at_their_own_rates_and_never_the_vae(tmp_path):
    base = load_base("tiny-random")
    before = {name: snapshot(getattr(base, name)) for name in ("unet", "text_encoder", "vae")}
    adapter = get_adapter("dreambooth")(train_config(
        "dreambooth", DreamBoothOptions(train_text_encoder=True), 1e-3, text_encoder_learning_rate=2e-4))

    losses = train_steps(base, adapter, ["a photo of sks emoji", "a photo of sks emoji"])

    groups = adapter.param_groups(base)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-3), ("text_encoder", 2e-4)]
    assert len(trainable_parameters(groups)) == len(list(base.unet.parameters())) + len(
        list(base.text_encoder.parameters()))
    assert losses[-1] < losses[0]
    assert changed_keys(before["vae"], base.vae) == set()
    assert len(changed_keys(before["unet"], base.unet)) > 0.9 * len(before["unet"])
    assert "embeddings.token_embedding.weight" in changed_keys(before["text_encoder"], base.text_encoder)

    files = adapter.export(base, tmp_path, METADATA)
    reloaded = load_base(str(files["diffusers"]))
    assert torch.equal(unet_output(reloaded), unet_output(base))
    with safe_open(str(files["diffusers"] / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        assert handle.metadata()["lsl_config_hash"] == "abc123"
        assert handle.metadata()["format"] == "pt"


def test_dreambooth_without_text_encoder_trains_only_the_unet():
    base = load_base("tiny-random")
    adapter = get_adapter("dreambooth")(train_config("dreambooth", DreamBoothOptions(), 1e-4, 5e-5))
    adapter.attach(base)
    assert [g["name"] for g in adapter.param_groups(base)] == ["unet"]
    assert not adapter.trains_text_encoder
    assert not any(p.requires_grad for module in (base.text_encoder, base.vae) for p in module.parameters())
    state = adapter.state_dict(base)
    assert len(state) == len(list(base.unet.parameters())) and all(k.startswith("unet.") for k in state)


def test_class_images_are_seeded_cached_and_leave_the_model_as_it_was(tmp_path, monkeypatch):
    import lora_core.adapters.dreambooth as dreambooth

    base = load_base("tiny-random")
    base.unet.train()
    first = generate_class_images(base, "an emoji", 2, tmp_path / "a", seed=3, steps=1)
    again = generate_class_images(base, "an emoji", 2, tmp_path / "b", seed=3, steps=1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert first[0].read_bytes() != first[1].read_bytes()   # one generator per image
    assert base.unet.training and not base.vae.training
    manifest = json.loads((tmp_path / "a" / "class_images.json").read_text())
    assert manifest["settings"]["class_prompt"] == "an emoji" and len(manifest["files"]) == 2

    calls = []
    real_generate = dreambooth._generate_one
    monkeypatch.setattr(dreambooth, "_generate_one", lambda *args: calls.append(args[2]) or real_generate(*args))
    more = generate_class_images(base, "an emoji", 3, tmp_path / "a", seed=3, steps=1)
    assert calls == [5] and more[:2] == first                # only image 3 (seed 3 + 2) is new
    generate_class_images(base, "a cat emoji", 1, tmp_path / "a", seed=3, steps=1)
    assert calls == [5, 3]                                   # other prompt: regenerated


# -- LyCORIS ---------------------------------------------------------------------------------------
# Training runs on the transformer blocks only (preset attn-mlp): LoHa/LoKr on every 3x3 conv
# make a CPU step 5-15x slower. The full preset (convs, text encoder) is checked by round trip.

@pytest.mark.parametrize("algo", ALGOS)
def test_lycoris_trains_adapter_weights_only_and_export_reloads_exactly(algo, tmp_path):
    base = load_base("tiny-random")
    before = {name: snapshot(getattr(base, name)) for name in ("unet", "text_encoder", "vae")}
    options = LycorisOptions(algo=algo, rank=4, alpha=2.0, preset="attn-mlp")
    adapter = get_adapter("lycoris")(train_config("lycoris", options, 1e-2))
    adapter.attach(base)
    initial = adapter.state_dict(base)
    losses = train_steps(base, adapter, [PROMPT, PROMPT], steps=2)

    assert losses[-1] < losses[0]
    assert all(changed_keys(before[name], getattr(base, name)) == set() for name in before)
    trained = adapter.state_dict(base)
    learned = [k for k in trained if trained[k].is_floating_point() and not k.endswith(".alpha")]
    assert learned and any(not torch.equal(initial[k], trained[k]) for k in learned)

    files = adapter.export(base, tmp_path, METADATA)
    fresh = load_base("tiny-random")
    load_lycoris(fresh, files["kohya"])
    assert torch.equal(unet_output(fresh), unet_output(base))
    with safe_open(str(files["kohya"]), framework="pt") as handle:
        metadata = handle.metadata()
        assert all(key.startswith("lora_unet_") for key in handle.keys())
    assert metadata["ss_network_module"] == "lycoris.kohya" and metadata["lsl_config_hash"] == "abc123"
    assert json.loads(metadata["ss_network_args"])["algo"] == algo


def test_lycoris_full_preset_covers_convs_and_text_encoder_and_round_trips(tmp_path):
    from lycoris import LycorisNetwork

    options = LycorisOptions(algo="locon", rank=2, alpha=1.0, conv_rank=2, conv_alpha=2.0,
                             train_text_encoder=True)
    base = load_base("tiny-random")
    adapter = get_adapter("lycoris")(train_config("lycoris", options, 1e-3, text_encoder_learning_rate=1e-4))
    adapter.attach(base)
    assert LycorisNetwork.LORA_PREFIX == "lycoris"       # our preset did not leak into the class
    assert [(g["name"], g["lr"]) for g in adapter.param_groups(base)] == [("unet", 1e-3), ("text_encoder", 1e-4)]
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.05 if k.endswith("weight") else v)
             for k, v in adapter.state_dict(base).items()}
    adapter.load_state_dict(base, state)
    assert state["lora_unet_conv_in.lora_down.weight"].shape == (2, 4, 3, 3)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn") for k in state)
    assert adapter.describe()["scale"] == 0.5 and adapter.describe()["conv_scale"] == 1.0

    fresh = load_base("tiny-random")
    expected = unet_output(base)
    assert not torch.equal(expected, unet_output(fresh))
    load_lycoris(fresh, adapter.export(base, tmp_path, METADATA)["kohya"])
    assert torch.equal(unet_output(fresh), expected)


def test_ia3_in_bypass_mode_computes_the_merged_modes_function_and_its_file_says_so(tmp_path):
    from lora_core.adapters.lycoris import load_lycoris

    models = {}
    for bypass in (False, True):
        base = load_base("tiny-random")
        options = LycorisOptions(algo="ia3", train_text_encoder=True, bypass=bypass)
        adapter = get_adapter("lycoris")(train_config("lycoris", options, 1e-2))
        adapter.attach(base)
        generator = torch.Generator().manual_seed(0)
        adapter.load_state_dict(base, {k: torch.randn(v.shape, generator=generator) * 0.3 if v.is_floating_point()
                                       else v for k, v in adapter.state_dict(base).items()})
        models[bypass] = (base, adapter.export(base, tmp_path / str(bypass), METADATA)["kohya"])
    (merged, _), (bypassed, bypass_file) = models[False], models[True]
    assert not torch.equal(unet_output(merged), unet_output(load_base("tiny-random")))
    torch.testing.assert_close(unet_output(bypassed), unet_output(merged), rtol=1e-5, atol=1e-5)
    fresh = load_base("tiny-random")
    networks = load_lycoris(fresh, bypass_file)
    assert all(module.bypass_mode for network in networks.values() for module in network.loras)
    assert torch.equal(unet_output(fresh), unet_output(bypassed))


def test_lycoris_rejects_bad_options_and_files(tmp_path):
    with pytest.raises(ValueError, match="unknown algo 'lohaa'. Valid algos: locon, loha, lokr, ia3"):
        LycorisOptions(algo="lohaa")
    with pytest.raises(ValueError, match="plain LoRA is method 'lora'"):
        LycorisOptions(algo="lora")
    with pytest.raises(ValueError, match="unknown preset 'attn'"):
        LycorisOptions(preset="attn")
    with pytest.raises(ValueError, match="only .safetensors LyCORIS files are loaded"):
        load_lycoris(None, tmp_path / "net.pt")
    from safetensors.torch import save_file
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(KeyError, match="no 'lsl_lycoris_options' metadata"):
        load_lycoris(load_base("tiny-random"), tmp_path / "other.safetensors")
