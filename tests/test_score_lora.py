"""score_lora: one LoRA in two layouts scores alike, the weight sweep generates what generate_cells
does at that weight, the best-range rule keeps what its definition says, bad input is one line."""
import copy
import json

import pandas as pd
import pytest
import torch
from PIL import Image

from lora_core import blend, score_lora
from lora_core.experiments import lora_sweep
from lora_core.experiments.common import generate_eval_images
from lora_core.formats import save_lora_diffusers, save_lora_kohya
from lora_core.generate import Cell, generate_cells
from lora_core.metrics.preprocess import as_uint8_images
from lora_core.profiles import get_profile

SMOKE = get_profile("smoke")
SMALL = ["max_prompts=2", "images_per_prompt=1", "n_unrelated=2", "strip_prompts=1", "weights=[0, 0.5, 1]"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_files(tiny_base, tmp_path_factory):
    """One random attention LoRA (rank 4, alpha 8: scale 2, so a reload at alpha = rank would
    differ) on the random tiny model, written in the diffusers and the kohya layout."""
    from peft import get_peft_model_state_dict

    folder = tmp_path_factory.mktemp("lora")
    base = copy.deepcopy(tiny_base)
    blend.add_random_adapter(base, "ink", rank=4, alpha=8.0, seed=1, std=0.2)
    diffusers_file = save_lora_diffusers(folder / "ink_diffusers.safetensors", base.unet, None, "ink", {})
    kohya_file = save_lora_kohya(folder / "ink_kohya.safetensors",
                                 get_peft_model_state_dict(base.unet, adapter_name="ink"), None, 8.0)
    return {"diffusers": diffusers_file, "kohya": kohya_file}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Three captioned reference images in a kohya repeat subfolder (found there too)."""
    folder = tmp_path_factory.mktemp("refs")
    (folder / "5_ink").mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (40, 40), colour).save(folder / "5_ink" / f"img{i}.png")
        (folder / "5_ink" / f"img{i}.txt").write_text(f"a red heart number {i}, sks\n")
    return folder


def run(argv, capsys):
    status = score_lora.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_one_lora_in_kohya_and_diffusers_layout_gets_the_same_report(lora_files, references, tiny_base_dir, tmp_path,
                                                                   capsys):
    # the base from a folder: "tiny-random" trains its tokenizer anew on every load, and words outside
    # its training text ("a red car on a road") may get other token ids from one load to the next
    reports = {}
    for layout, path in lora_files.items():
        status, out, err = run([str(path), "--images", str(references), "--profile", "smoke",
                                "--base", str(tiny_base_dir), "--out", str(tmp_path / layout),
                                "--cache-dir", str(tmp_path / "cache"), "--set", *SMALL], capsys)
        assert status == 0, err
        assert "best weight range:" in out
        reports[layout] = json.loads((tmp_path / layout / score_lora.REPORT_FILE).read_text())
        assert {p.name for p in (tmp_path / layout).iterdir()} == {"report.json", "scores.png", "strip.png"}
    kohya, diffusers = (pd.DataFrame(reports[k]["table"]) for k in ("kohya", "diffusers"))
    assert (reports["kohya"]["layout"], reports["diffusers"]["layout"]) == ("kohya", "diffusers")
    assert kohya[["weight", "measure"]].values.tolist() == diffusers[["weight", "measure"]].values.tolist()
    assert kohya["value"].tolist() == pytest.approx(diffusers["value"].tolist(), abs=1e-6)
    assert reports["kohya"]["best_weight_range"] == reports["diffusers"]["best_weight_range"]
    assert set(kohya["weight"]) == {0.0, 0.5, 1.0} and set(kohya["measure"]) == {"fidelity_cosine", "st_lpips_to_base"}
    assert "alignment" in reports["kohya"]["left_out"]   # smoke has no alignment model, and says so
    preservation = kohya[kohya["measure"] == "st_lpips_to_base"].set_index("weight")["value"]
    assert preservation[0.0] == 0.0 and 0.0 < preservation[0.5] < preservation[1.0]


def test_sweep_images_are_generate_cells_at_each_weight(tiny_base, lora_files, tmp_path):
    sets = lora_sweep.sweep_sets(["a red heart"], lora_sweep.ScoreSettings(images_per_prompt=1, n_unrelated=1))
    images = lora_sweep.sweep_images(tiny_base, {lora_files["kohya"]: 1.0}, sets, (0.0, 0.5), SMOKE,
                                     cache_dir=tmp_path, clip_skip=2, negative_prompt="a cat")
    for w in (0.0, 0.5):
        adapters = ((str(lora_files["kohya"]), w),) if w else ()
        cells = [Cell(prompt=p, seed=s, steps=SMOKE.inference_steps, guidance_scale=SMOKE.guidance_scale,
                      clip_skip=2, negative_prompt="a cat", adapters=adapters)
                 for es in sets.values() for p, s in zip(es.prompts, es.seeds)]
        expected = as_uint8_images(generate_cells(tiny_base, cells, batch_size=1).images, "expected")
        generated = torch.cat([images[(name, w)] for name in sets])
        assert (generated.int() - expected.int()).abs().max() <= 1   # batch rounding: one 8-bit level at most
    assert not torch.equal(images[(lora_sweep.CHARACTER, 0.0)], images[(lora_sweep.CHARACTER, 0.5)])


def test_one_file_at_weight_1_keeps_its_cache_key_and_weights_and_settings_enter_it(tiny_base, lora_files, tmp_path):
    path = lora_files["diffusers"]
    first = generate_eval_images(tiny_base, ["a cat"], [1], SMOKE, adapter=path, cache_dir=tmp_path)
    again = generate_eval_images(tiny_base, ["a cat"], [1], SMOKE, adapter={path: 1.0}, cache_dir=tmp_path)
    assert torch.equal(first, again) and len(list(tmp_path.iterdir())) == 1
    generate_eval_images(tiny_base, ["a cat"], [1], SMOKE, adapter={path: 0.5}, cache_dir=tmp_path)
    generate_eval_images(tiny_base, ["a cat"], [1], SMOKE, adapter=path, cache_dir=tmp_path, clip_skip=2)
    assert len(list(tmp_path.iterdir())) == 3


def table(rows):
    return pd.DataFrame(rows, columns=["weight", "measure", "value", "ci_low", "ci_high", "better"])


def test_best_range_keeps_weights_indistinguishable_from_the_best_on_both_measures():
    rows = table([(0.0, "fidelity", 0.10, 0.05, 0.15, "higher"), (0.25, "fidelity", 0.40, 0.30, 0.50, "higher"),
                  (0.5, "fidelity", 0.60, 0.52, 0.68, "higher"), (1.0, "fidelity", 0.70, 0.65, 0.75, "higher"),
                  (0.0, "alignment", 0.50, 0.45, 0.55, "higher"), (0.25, "alignment", 0.48, 0.43, 0.53, "higher"),
                  (0.5, "alignment", 0.46, 0.42, 0.50, "higher"), (1.0, "alignment", 0.30, 0.25, 0.35, "higher")])
    # fidelity: 0.5 and 1.0 overlap the best (1.0); alignment: 0, 0.25, 0.5 overlap the best (0)
    assert lora_sweep.best_weight_range(rows, "fidelity").values == (0.5,)
    assert lora_sweep.best_weight_range(rows, "fidelity", keep=()).values == (0.5, 1.0)
    no_alignment = rows[rows.measure == "fidelity"]   # a keep measure that is missing is left out of the rule
    assert lora_sweep.best_weight_range(no_alignment, "fidelity").text == "0.5-1"
    lower = rows.assign(better="lower")   # the best is now the smallest value
    assert lora_sweep.indistinguishable_from_best(lower[lower.measure == "fidelity"]) == [0.0]
    assert lora_sweep.best_weight_range(lower, "fidelity") is None   # only weight 0, which is not a LoRA weight


@pytest.mark.parametrize("bad, message", [
    ({"weights": (0.5, 1.0)}, "weights must include 0"),
    ({"images_per_prompt": 0}, "images_per_prompt must be >= 1"),
    ({"n_unrelated": 99}, "n_unrelated must be <="),
])
def test_settings_refuse_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        lora_sweep.ScoreSettings(**bad)


def test_a_lora_for_another_architecture_is_one_line_naming_the_file(references, tmp_path, capsys):
    from safetensors.torch import save_file

    sdxl = tmp_path / "sdxl_style.safetensors"   # SDXL kohya names and widths: no module of the tiny UNet
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 640), f"{name}.lora_up.weight": torch.zeros(640, 4),
               f"{name}.alpha": torch.tensor(4.0)}, str(sdxl))
    status, out, err = run([str(sdxl), "--images", str(references), "--profile", "smoke", "--out",
                            str(tmp_path / "report")], capsys)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {sdxl}: kohya LoRA does not fit this model")
    assert not (tmp_path / "report").exists()   # nothing was written


@pytest.mark.parametrize("content, message", [
    ({"notes.txt": "a caption without an image"}, "no images found"),
    (None, "no such folder of reference images"),
])
def test_a_folder_without_images_is_one_line_naming_the_folder(lora_files, tmp_path, capsys, content, message):
    folder = tmp_path / "refs"
    if content is not None:
        folder.mkdir()
        for file_name, text in content.items():
            (folder / file_name).write_text(text)
    status, out, err = run([str(lora_files["kohya"]), "--images", str(folder), "--profile", "smoke"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {folder}") and message in err


def test_images_without_captions_ask_for_a_prompt_file(lora_files, tmp_path, capsys):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    status, _, err = run([str(lora_files["kohya"]), "--images", str(tmp_path), "--profile", "smoke"], capsys)
    assert status == 2 and "give --prompts FILE" in err
    (tmp_path / "empty.txt").write_text("\n\n")
    status, _, err = run([str(lora_files["kohya"]), "--images", str(tmp_path), "--profile", "smoke",
                          "--prompts", str(tmp_path / "empty.txt")], capsys)
    assert status == 2 and "empty.txt: no prompts" in err


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit):
        score_lora.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"{key}=" in text for key in lora_sweep.ScoreSettings.help())
