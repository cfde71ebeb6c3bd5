"""Every command line: a user error is one line on stderr with exit status 2 (the traceback only
with --debug), a bug keeps its traceback, and --help lists every config key from the dataclasses."""
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_core import train as train_module
from lora_core.adapters import available_methods, get_adapter
from lora_core.data import DataConfig, DatasetError
from lora_core.train import TrainConfig, TrainingDiverged

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_image_folder(tmp_path):
    """A dataset whose second image is a zero-byte file."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"")
    for stem in ("a", "b"):
        (folder / f"{stem}.txt").write_text("a red square")
    return folder


def _train_cli(capsys, *argv):
    status = train_module.main([*argv, "--no-progress"])
    return status, capsys.readouterr()


def test_a_bad_dataset_is_one_line_and_status_2(empty_image_folder, tmp_path, capsys):
    status, out = _train_cli(capsys, f"data.folder={empty_image_folder}", "--runs-root", str(tmp_path / "runs"))
    assert status == 2
    assert out.err == f"error: {empty_image_folder / 'b.png'}: empty file (0 bytes)\n"
    with pytest.raises(DatasetError, match=r"b\.png: empty file \(0 bytes\)"):
        train_module.main([f"data.folder={empty_image_folder}", "--runs-root", str(tmp_path / "runs"), "--debug"])


@pytest.mark.parametrize("argv, message", [
    (["data.folder=x", "options.rnak=8"], r"^error: LoraOptions: unknown key 'rnak'\. Valid keys: rank, alpha"),
    (["data.folder=x", "learning_rate"], r"^error: override 'learning_rate' is not key=value$"),
    (["data.folder=x", "optimizer=adam"], r"^error: TrainConfig: optimizer='adam' is not one of adamw, "),
    (["--config", "missing.yaml"], r"^error: missing\.yaml: No such file or directory$"),
])
def test_bad_keys_values_and_files_are_one_line(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    status, out = _train_cli(capsys, *argv)
    assert status == 2 and len(out.err.splitlines()) == 1
    assert re.search(message, out.err), out.err


def test_a_config_file_that_does_not_parse_names_the_file(tmp_path, capsys):
    bad_yaml = tmp_path / "run.yaml"
    bad_yaml.write_text("data: {folder: x\nseed: 1\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- seed\n")
    problems = {bad_yaml: "not valid YAML or JSON", listed: "expected a mapping of config keys, got a list"}
    for path, problem in problems.items():
        status, out = _train_cli(capsys, "--config", str(path))
        assert status == 2 and out.err.startswith(f"error: {path}: {problem}") and len(out.err.splitlines()) == 1


def test_bugs_keep_their_traceback_and_expected_failures_exit_1(tmp_path, capsys, monkeypatch):
    def numpy_bug(*args, **kwargs):
        return np.ones(3) + np.ones(4)   # a ValueError raised inside numpy: a bug, not bad input

    monkeypatch.setattr(train_module, "train", numpy_bug)
    with pytest.raises(ValueError, match="operands could not be broadcast"):
        train_module.main(["data.folder=x"])

    def diverged(*args, **kwargs):
        raise TrainingDiverged("loss is nan at step 3 (micro-batch 1); training stopped")

    monkeypatch.setattr(train_module, "train", diverged)
    status, out = _train_cli(capsys, "data.folder=x")
    assert status == 1 and out.err == "error: loss is nan at step 3 (micro-batch 1); training stopped\n"


def test_python_m_train_prints_only_the_error_line(empty_image_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lora_core.train", f"data.folder={empty_image_folder}",
                           "--runs-root", str(tmp_path / "runs")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr == f"error: {empty_image_folder / 'b.png'}: empty file (0 bytes)\n"


def test_a_relative_folder_on_the_command_line_is_read_from_the_working_directory(empty_image_folder, tmp_path,
                                                                                monkeypatch, capsys):
    monkeypatch.chdir(empty_image_folder.parent)
    status, out = _train_cli(capsys, f"data.folder={empty_image_folder.name}", "--runs-root", "runs")
    assert status == 2 and out.err == f"error: {empty_image_folder / 'b.png'}: empty file (0 bytes)\n"


def _help(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    return capsys.readouterr().out


def _keys(config_class, prefix=""):
    return [f"{prefix}{f.name}" for f in dataclasses.fields(config_class)]


def test_train_help_lists_every_key_with_its_default_and_help(capsys):
    text = _help(train_module.main, ["--help"], capsys)
    entries = {line.split("=")[0].strip(): line for line in text.splitlines() if line.startswith("  ") and "=" in line}
    expected = [k for k in _keys(TrainConfig) if k not in ("options", "data")] + _keys(DataConfig, "data.")
    for method in available_methods():
        expected += _keys(get_adapter(method).Options, "options.")
        assert f"options.* for method={method} ({get_adapter(method).Options.__name__}):" in text
    assert [key for key in expected if key not in entries] == []
    assert "learning_rate=0.0001" in entries["learning_rate"] and "UNet (or the method's main) learning rate" in text
    lora_section = text.split("for method=lora (LoraOptions):")[1].split("\n\n")[0]
    assert "  options.alpha=null " in lora_section and "  options.rank=4 " in lora_section
    assert entries["data.folder"].split()[0] == "data.folder=(required)"
    assert "network_alpha -> options.alpha" in " ".join(text.split())


def test_every_kohya_name_maps_to_a_real_key():
    valid = set(_keys(TrainConfig)) | set(_keys(DataConfig, "data.")) | {
        key for method in available_methods() for key in _keys(get_adapter(method).Options, "options.")}
    targets = [part.split("=")[0].split(" ")[0]
               for ours in train_module.KOHYA_NAMES.values() for part in ours.split(" / ")]
    assert [t for t in targets if t not in valid] == []


def test_toy_help_lists_the_config_keys_of_pretraining_and_heads(capsys):
    from lora_core.toy.__main__ import main as toy_main
    from lora_core.toy.heads import HeadsConfig
    from lora_core.toy.pretrain import PretrainConfig
    from lora_core.toy.vae_finetune import VaeFinetuneConfig

    for command in ("pretrain-vae", "pretrain-unet", "pretrain-all", "export"):
        text = _help(toy_main, [command, "--help"], capsys)
        assert [k for k in _keys(PretrainConfig) if f"  {k}=" not in text] == [], command
    text = _help(toy_main, ["train-heads", "--help"], capsys)
    assert [k for k in _keys(HeadsConfig) if f"  {k}=" not in text] == []
    for command in ("vae-finetune", "export-vae"):
        text = _help(toy_main, [command, "--help"], capsys)
        assert [k for k in _keys(VaeFinetuneConfig) if f"  {k}=" not in text] == [], command


def test_toy_user_errors_are_one_line_after_or_before_the_subcommand(tmp_path, capsys):
    from lora_core.toy.__main__ import main as toy_main

    config = tmp_path / "pretrain.json"
    config.write_text('{"vae_lr": 1e-3, "bogus": 1}')
    argv = ["export", "--config", str(config), "--out", str(tmp_path)]
    assert toy_main(argv) == 2
    assert capsys.readouterr().err.startswith("error: PretrainConfig: unknown key 'bogus'. Valid keys: data_dir")
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="unknown key 'bogus'"):
            toy_main(debug)


def test_heads_user_error_is_one_line(capsys):
    from lora_core.toy.__main__ import main as toy_main

    assert toy_main(["train-heads", "--set", "align_step=3", "--vae", "none"]) == 2
    assert capsys.readouterr().err.startswith("error: HeadsConfig: unknown key 'align_step'. Valid keys:")


def test_book_help_lists_profiles_and_the_parameters_papermill_sees(capsys):
    from lora_core import book
    from lora_core.profiles import PROFILES

    text = _help(book.main, ["--help"], capsys)
    assert all(profile.description.split()[0] in text for profile in PROFILES.values())
    for name in book.toc_notebooks():
        declared = book.notebook_parameters(book.NOTEBOOK_DIR / f"{name}.py")   # papermill's reading
        listed = {key for key, _, _ in book.parameters_cell(book.NOTEBOOK_DIR / f"{name}.py")}
        assert listed == set(declared), name
        assert f"  {name}:" in text and all(f"    {key}=" in text for key in listed - {"profile"})


def test_book_refusal_exits_1_with_the_message(capsys):
    from lora_core import book

    assert book.main(["--only", "no_such_chapter", "--no-build"]) == 1
    assert capsys.readouterr().err.startswith("error: not in book/_toc.yml: no_such_chapter. Notebooks: ")


def test_a_missing_dataset_folder_is_a_user_error(capsys):
    status, out = _train_cli(capsys, "data.folder=/no/such/folder")
    assert status == 2 and out.err == "error: /no/such/folder: dataset folder does not exist\n"
