"""Colab and Kaggle set-up with mocked environments: detection, the commands it would run (no
network, nothing installed), the output folder runs resume from, the GPU check before any work."""
import shutil
import sys
import types
from pathlib import Path

import pytest

from lora_core import platforms, runs
from lora_core.gpu import example_device
from lora_core.platforms import SetupPlan, detect_platform, plan_setup, prepare

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_TORCH = {"torch": "2.8.0+cu128", "torchvision": "0.23.0+cu128"}
FRESH_IMAGE = PLATFORM_TORCH.get  # a fresh Colab or Kaggle image's installed versions: its torch, not this project


@pytest.mark.parametrize("environ, modules, expected", [
    ({"COLAB_RELEASE_TAG": "release-colab_20260101-060000_RC00"}, {}, "colab"),
    ({}, {"google.colab": types.ModuleType("google.colab")}, "colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {}, "kaggle"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, {}, "kaggle"),
    ({"HOME": "/root", "COLAB_GPU": ""}, {"google": types.ModuleType("google")}, "local"),
])
def test_platforms_are_detected_from_their_documented_variables_and_modules(environ, modules, expected):
    assert detect_platform(environ, modules) == expected


def _package_names(command):
    """The packages an install command names (not its options, files or paths)."""
    return [part for part in command if not part.startswith("-") and "/" not in part
            and part not in ("pip", "install", sys.executable)]


def test_kaggle_installs_the_project_beside_its_own_torch_and_keeps_runs_in_kaggle_working():
    plan = plan_setup("kaggle", ROOT, installed=FRESH_IMAGE)
    requirements, constraints = ROOT / "requirements-gpu.txt", ROOT / "scratch" / "platform-constraints.txt"
    assert plan.commands == (
        (sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)),
        (sys.executable, "-m", "pip", "install", "--quiet", "-r", str(requirements), "-c", str(constraints)))
    assert not any(_package_names(command) for command in plan.commands)  # no package named on a command line
    assert plan.files == {constraints: "torch==2.8.0+cu128\ntorchvision==0.23.0+cu128\n"}
    assert plan.environment == {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
                                "LSL_RUNS_ROOT": "/kaggle/working/lora-style-lab-output/runs"}
    assert plan.runs_root == Path("/kaggle/working/lora-style-lab-output/runs")


def test_the_gpu_requirements_never_name_torch_or_torchvision():
    """pip must keep the platform's builds: the requirements leave them out, the constraints pin them."""
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-gpu.txt").read_text().splitlines()]
    names = {platforms.re.split(r"[=<>\[ ;]", line)[0].lower() for line in lines if line}
    assert not names & {"torch", "torchvision", "pytorch"}
    assert set(platforms.required_pins(ROOT / "requirements-gpu.txt")) == names


def test_colab_keeps_runs_in_drive_and_says_when_drive_is_missing():
    mounted = plan_setup("colab", ROOT, drive_mounted=True, installed=FRESH_IMAGE)
    assert mounted.runs_root == Path("/content/drive/MyDrive/lora-style-lab/runs") and not mounted.notes
    unmounted = plan_setup("colab", ROOT, drive_mounted=False, installed=FRESH_IMAGE)
    assert unmounted.runs_root == Path("/content/lora-style-lab-output/runs")
    assert unmounted.notes == ("Google Drive is not mounted: runs go to /content/lora-style-lab-output, which a "
                               "new session loses",)


def test_a_second_run_of_the_cell_installs_nothing_and_missing_data_is_built():
    pins = platforms.required_pins(ROOT / "requirements-gpu.txt")
    everything = {**pins, **PLATFORM_TORCH, "lora-style-lab": "0.1.0"}
    plan = plan_setup("kaggle", ROOT, installed=everything.get, data_ready=False)
    assert plan.commands == (("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"),
                             (sys.executable, "-m", "lora_core.toy", "build"))
    without_npm = plan_setup("kaggle", ROOT, installed=everything.get, data_ready=False, npm_available=False)
    assert without_npm.commands == () and "npm is missing" in without_npm.notes[0]
    one_pin_off = plan_setup("kaggle", ROOT, installed={**everything, "diffusers": "0.30.0"}.get)
    assert len(one_pin_off.commands) == 2


def test_local_changes_nothing():
    plan = plan_setup("local", ROOT, installed=FRESH_IMAGE)
    assert plan == SetupPlan("local", ROOT, ROOT, notes=("not on Colab or Kaggle: nothing installed",))


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """A Kaggle session in a temporary folder: its variable, /kaggle/working, a clone of the
    repository's requirements, and every global prepare() changes restored afterwards."""
    import huggingface_hub.constants as hub_constants

    working = tmp_path / "kaggle" / "working"
    clone = tmp_path / "clone"
    (clone / "data" / "styles").mkdir(parents=True)
    shutil.copy(ROOT / "requirements-gpu.txt", clone)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setitem(platforms.OUTPUT_DIRS, "kaggle", working / "lora-style-lab-output")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LSL_RUNS_ROOT", "runs")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(runs, "DEFAULT_RUNS_ROOT", Path("runs"))
    monkeypatch.chdir(tmp_path)
    commands = []
    return types.SimpleNamespace(working=working, clone=clone, commands=commands,
                                 run=lambda command, **kwargs: commands.append((command, kwargs)))


def test_prepare_on_kaggle_installs_unsets_offline_and_moves_the_runs_root(fake_kaggle):
    import huggingface_hub.constants as hub_constants

    cpu = example_device("cpu")
    assert prepare("tiny", repo_dir=fake_kaggle.clone, run=fake_kaggle.run, device=cpu,
                   installed=FRESH_IMAGE) == "tiny"
    assert [command[3:5] for command, _ in fake_kaggle.commands] == [["install", "--quiet"]] * 2
    assert fake_kaggle.commands[1][0][-3:] == [str(fake_kaggle.clone / "requirements-gpu.txt"), "-c",
                                               str(fake_kaggle.clone / "scratch" / "platform-constraints.txt")]
    assert all(kwargs == {"cwd": fake_kaggle.clone, "check": True} for _, kwargs in fake_kaggle.commands)
    assert "HF_HUB_OFFLINE" not in platforms.os.environ and hub_constants.HF_HUB_OFFLINE is False
    output = fake_kaggle.working / "lora-style-lab-output"
    assert runs.run_dir_for("lora", "0123456789ab") == output / "runs" / "lora-0123456789ab"
    assert Path.cwd() == fake_kaggle.clone
    assert (fake_kaggle.clone / "scratch" / "platform-constraints.txt").read_text() == (
        "torch==2.8.0+cu128\ntorchvision==0.23.0+cu128\n")


def test_a_run_interrupted_on_kaggle_resumes_in_kaggle_working(fake_kaggle, tiny_base, one_thread, monkeypatch):
    """Re-running the cells after a dead session: the same config resumes from its last full state
    in the output folder (runs_root left to the default, as the chapters leave it)."""
    import numpy as np
    from PIL import Image

    from lora_core.train import TrainConfig, train

    prepare("tiny", repo_dir=fake_kaggle.clone, run=fake_kaggle.run, device=example_device("cpu"))
    images = fake_kaggle.clone / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a photo of an emoji {i}")
    config = TrainConfig(data={"folder": str(images)}, max_train_steps=3, batch_size=2, checkpoint_every_steps=1,
                         options={"rank": 4, "alpha": 4.0})
    append = runs.append_metrics

    def session_dies_at_step_2(run_dir, row):
        append(run_dir, row)
        if row["step"] == 2:
            raise KeyboardInterrupt("the session died")

    monkeypatch.setattr(runs, "append_metrics", session_dies_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(config, base=tiny_base, progress=False)
    monkeypatch.setattr(runs, "append_metrics", append)
    record = train(config, base=tiny_base, progress=False)
    assert record.run_dir.parent == fake_kaggle.working / "lora-style-lab-output" / "runs"
    assert record.summary["resumed_from_step"] == 1 and record.summary["steps"] == 3


def test_sd15_stops_before_any_work_on_a_p100_with_a_cuda_12_8_torch_and_plans_a_t4(fake_kaggle):
    from lora_core.gpu import UnusableGPU
    from lora_core.profiles import PROFILES

    with pytest.raises(UnusableGPU, match=r"no kernel image is available.*whl/cu126"):
        prepare("sd15", repo_dir=fake_kaggle.clone, run=fake_kaggle.run, device=example_device("P100", "cu128"))
    planned = prepare("sd15", repo_dir=fake_kaggle.clone, run=fake_kaggle.run, device=example_device("T4"))
    assert planned == PROFILES["sd15"] and planned.mixed_precision == "fp16" and planned.optimizer == "adamw8bit"


def test_modules_upgraded_under_the_kernel_ask_for_a_restart(fake_kaggle, monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", types.SimpleNamespace(__version__="1.0.0"))
    with pytest.raises(platforms.RestartNeeded, match=r"pip upgraded numpy under the running kernel: restart"):
        prepare("tiny", repo_dir=fake_kaggle.clone, run=fake_kaggle.run, device=example_device("cpu"))
