"""The pins that make the offline CPU environment work are kept consistent."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEVER_ON_DEFAULT_PATH = ("torchvision", "torch-fidelity", "torch_fidelity", "open-clip-torch", "timm",
                         "clean-fid", "pytorch-fid", "lpips")


def _pins(lines):
    return dict(re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line).groups()
                for line in lines if re.match(r"^[A-Za-z0-9_.\-]+==", line))


def test_default_path_pins_exact_cpu_torch_and_no_torchvision():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    assert pins["torch"] == "2.13.0"
    assert len(pins) == len(project["dependencies"]), "every default dependency is pinned exactly"
    assert not set(pins) & set(NEVER_ON_DEFAULT_PATH)
    assert "torchvision" in project["optional-dependencies"]["gpu"]


def test_gpu_requirements_match_pyproject_except_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu_lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-gpu.txt").read_text().splitlines()]
    gpu = _pins(gpu_lines)
    default = _pins(project["dependencies"])
    assert {k: v for k, v in default.items() if k != "torch"} == {k: v for k, v in gpu.items() if k != "lpips"}


def test_environment_yml_mirrors_the_pins():
    text = (ROOT / "environment.yml").read_text()
    default = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    conda = _pins(line.strip().lstrip("- ") for line in text.splitlines())
    assert {k: v for k, v in conda.items() if k != "pytest"} == default


def test_notebooks_force_no_matplotlib_backend_and_have_parameters():
    for notebook in sorted((ROOT / "notebooks").glob("*.py")):
        text = notebook.read_text()
        assert "matplotlib.use(" not in text, notebook.name
        assert re.search(r'^# %% tags=\[[^\]]*"parameters"', text, re.M), notebook.name
        assert re.search(r'^profile = "tiny"', text, re.M), f"{notebook.name}: default profile is tiny"
