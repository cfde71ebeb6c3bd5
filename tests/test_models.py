"""Every base-model source loads the same weights: outputs are compared exactly."""
import copy
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from lora_core.models import build_tiny_random, load_base


def _outputs(base):
    """UNet noise prediction, VAE decode and text embeddings on fixed inputs."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    ids = base.tokenizer(["a red heart", "a cat face"], padding="max_length", truncation=True,
                         max_length=base.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        text = base.text_encoder(ids)[0]
        noise = base.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text).sample
        decoded = base.vae.decode(latents).sample
    return ids, text, noise, decoded


def _assert_same_model(a, b):
    for x, y in zip(_outputs(a), _outputs(b)):
        assert torch.equal(x, y)


def test_tiny_random_is_seeded_and_sd_shaped():
    a, b, c = build_tiny_random(seed=0), build_tiny_random(seed=0), build_tiny_random(seed=1)
    _assert_same_model(a, b)
    assert not torch.equal(_outputs(a)[2], _outputs(c)[2])
    assert a.random_weights and a.resolution == 32 and a.vae_scale_factor == 4
    assert a.unet.config.cross_attention_dim == a.text_encoder.config.hidden_size
    assert len(a.tokenizer) == a.text_encoder.get_input_embeddings().num_embeddings
    assert a.tokenizer.model_max_length == 77


def test_the_random_models_tokenizer_is_the_same_in_every_process_and_reads_its_words():
    """Rebuilt per process, BPE ties made a different tokenizer (and smoke cache keys) each time."""
    from lora_core.models import base_fingerprint

    here = build_tiny_random()
    code = ("import json; from lora_core.models import base_fingerprint, build_tiny_random; "
            "base = build_tiny_random(); print(json.dumps([base_fingerprint(base), base.tokenizer.get_vocab(), "
            "base.tokenizer('a grinning cat in the style of sks').input_ids]))")
    other = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
    assert other == [base_fingerprint(here), here.tokenizer.get_vocab(),
                     here.tokenizer("a grinning cat in the style of sks").input_ids]
    words = ("a photo of an emoji face heart cat dog smiling grinning red blue green yellow person hand flag food "
             "animal plant object symbol in the style of sks").split()
    assert [here.tokenizer.tokenize(word) for word in words] == [[f"{word}</w>"] for word in words]


def test_diffusers_folder_round_trip(tiny_base, tiny_base_dir):
    loaded = load_base(str(tiny_base_dir))
    assert loaded.source == str(tiny_base_dir) and not loaded.random_weights
    assert len(loaded.tokenizer) == len(tiny_base.tokenizer)
    _assert_same_model(tiny_base, loaded)


def test_a_pickled_base_is_rebuilt_with_its_weights_dtype_and_mode_and_encodes_text_in_another_process(tiny_base):
    """Pickled whole, the text encoder returned no hidden states in a spawned process."""
    import multiprocessing
    import pickle

    from lora_core.models import base_fingerprint

    again = pickle.loads(pickle.dumps(tiny_base))
    _assert_same_model(tiny_base, again)
    assert (again.source, again.random_weights, again.unet.training) == ("tiny-random", True, False)
    half = pickle.loads(pickle.dumps(replace(tiny_base, unet=copy.deepcopy(tiny_base.unet).half())))
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        fingerprint, hidden = pool.apply(_fingerprint_and_hidden_states, (tiny_base,))
    assert fingerprint == base_fingerprint(tiny_base)
    assert torch.equal(hidden, _fingerprint_and_hidden_states(tiny_base)[1])


def _fingerprint_and_hidden_states(base):
    from lora_core.models import base_fingerprint

    with torch.no_grad():
        output = base.text_encoder(torch.arange(1, 9)[None], output_hidden_states=True)
    return base_fingerprint(base), output.hidden_states[-2]


def test_hub_id_loads_from_the_offline_cache(tiny_base, tiny_base_dir, tmp_path, monkeypatch):
    """The hub path is real code: a snapshot in the cache layout loads with HF_HUB_OFFLINE=1."""
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / "hub" / "models--lsl-test--tiny-sd"
    revision = "0" * 40
    shutil.copytree(tiny_base_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_base("lsl-test/tiny-sd")
    _assert_same_model(tiny_base, loaded)


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even opened")
    with pytest.raises(ValueError, match=rf"refusing to load a pickle checkpoint \({suffix}\).*safetensors"):
        load_base(str(path))


def test_bad_sources_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_base(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing: no such folder or file. load_base accepts"):
        load_base(str(tmp_path / "missing"))
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    with pytest.raises(ValueError, match="needs config="):
        load_base(str(single))


def test_a_two_token_tokenizer_is_caught(tiny_base_dir, tmp_path):
    """transformers 5 can silently give a 2-token tokenizer; loading must not pass it on."""
    broken = shutil.copytree(tiny_base_dir, tmp_path / "broken")
    tokenizer_json = broken / "tokenizer" / "tokenizer.json"
    spec = json.loads(tokenizer_json.read_text())
    spec["model"]["vocab"] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    spec["model"]["merges"] = []
    tokenizer_json.write_text(json.dumps(spec))
    with pytest.raises(RuntimeError, match="tokenizer has 2 tokens but the text encoder has"):
        load_base(str(broken))


def test_reserved_words_must_survive_clip_pre_tokenization(tmp_path):
    from lora_core.tokenizer import build_clip_tokenizer, load_clip_tokenizer

    folder = build_clip_tokenizer(["a red heart"] * 5, tmp_path / "ok", reserved_words=("opnmj",))
    assert load_clip_tokenizer(folder).tokenize("opnmj") == ["opnmj</w>"]
    with pytest.raises(ValueError, match=r"reserved word 'flt3d' tokenizes as .*not one token"):
        build_clip_tokenizer(["a red heart"] * 5, tmp_path / "bad", reserved_words=("flt3d",))


def test_shipped_toy_base_loads_under_its_portable_name():
    """Configs say ``base_model="toy:base"``; the loaded base must say the same (not a local path)."""
    base = load_base("toy:base")
    assert base.source == "toy:base" and not base.random_weights
    assert base.resolution == 32 and len(base.tokenizer) == base.text_encoder.get_input_embeddings().num_embeddings


def test_a_mistyped_folder_says_it_does_not_exist_and_lists_the_accepted_sources(tmp_path, monkeypatch):
    (tmp_path / "models" / "tiny-sd").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    accepted = (r"load_base accepts: 'tiny-random' \(random weights\), 'toy:base' \(models/tiny-sd\), a diffusers "
                r"folder \(with model_index.json\), a single-file .safetensors checkpoint with config=, or a hub id")
    with pytest.raises(FileNotFoundError, match=r"^models/tiny-sdd: no such folder or file "
                                                rf"\(did you mean models/tiny-sd\?\)\. {accepted}"):
        load_base("models/tiny-sdd")
    with pytest.raises(FileNotFoundError, match=rf"^runs/a/b: no such folder or file\. {accepted}"):
        load_base("runs/a/b")   # more than owner/name: a path, never a hub id


def test_an_unknown_hub_id_says_what_was_tried(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^lsl-test/none-such: no such folder or file here, and no hub model "
                                                r"of that id could be loaded \(Cannot find an appropriate cached "
                                                r"snapshot.*\)\. load_base accepts: "):
        load_base("lsl-test/none-such")
    with pytest.raises(FileNotFoundError, match=r"^tiny-randm: no such folder or file here \(did you mean tiny-random"):
        load_base("tiny-randm")


def test_a_pickle_named_safetensors_in_a_model_is_named(tiny_base_dir, tmp_path):
    folder = shutil.copytree(tiny_base_dir, tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save({"conv_in.weight": torch.zeros(1)}, weights)
    zip_archive = (r": not a safetensors file: it is a zip archive, the format torch\.save writes \(a pickle "
                   r"checkpoint, renamed\?\); convert it once")
    with pytest.raises(ValueError, match=f"^{re.escape(str(weights))}{zip_archive}"):
        load_base(str(folder))
    single = tmp_path / "model.safetensors"
    torch.save({"state_dict": {}}, single)
    with pytest.raises(ValueError, match=f"^{re.escape(str(single))}{zip_archive}"):
        load_base(str(single), config=str(tiny_base_dir))
