"""Colab and Kaggle: detect the platform, install the project beside the platform's own torch,
choose the output folder where runs resume, and check the GPU before any work.

Every paired notebook (``notebooks/ipynb/``, written by ``python -m lora_core.pairing``) starts
with a set-up cell that clones the repository when ``lora_core`` is not importable and then calls
:func:`prepare`. On Colab or Kaggle it

1. installs the project with ``pip install --no-deps -e .`` and ``requirements-gpu.txt`` (which never
   names torch), under a constraints file that pins the platform's torch and torchvision, so pip
   fails rather than replace them (they match the platform's CUDA driver);
2. builds the emoji style sets when they are missing (``npm ci``, ``python -m lora_core.toy build``);
3. unsets ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE``: SD v1.5, CLIP and the LPIPS weights come
   from the hub;
4. points the runs folder (``LSL_RUNS_ROOT``) at the output folder: Google Drive on Colab,
   ``/kaggle/working`` on Kaggle. Training writes its full state there every
   ``checkpoint_every_steps``, so after a dead session re-running the cells resumes the run;
5. checks the GPU (:func:`lora_core.gpu.check_device`) and, for the ``sd15`` profile, returns the
   profile planned for the card (:func:`lora_core.gpu.sd15_for`).

Elsewhere (``local``) it installs nothing and changes nothing but reports the device.

>>> detect_platform({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, modules={})
'kaggle'
>>> detect_platform({"COLAB_RELEASE_TAG": "release-colab_20260101-060000_RC00"}, modules={})
'colab'
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
COLAB_DRIVE = Path("/content/drive")
OUTPUT_DIRS = {"colab": COLAB_DRIVE / "MyDrive" / "lora-style-lab",
               "colab-no-drive": Path("/content/lora-style-lab-output"),
               "kaggle": Path("/kaggle/working/lora-style-lab-output")}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
KEPT_PACKAGES = ("torch", "torchvision")   # the platform's builds, matched to its CUDA driver


def detect_platform(environ: Mapping[str, str] = os.environ, modules: Mapping[str, Any] = sys.modules) -> str:
    """``colab``, ``kaggle`` or ``local``, from the variables and modules each platform documents
    (``COLAB_RELEASE_TAG`` or an imported ``google.colab``; ``KAGGLE_KERNEL_RUN_TYPE``)."""
    if "COLAB_RELEASE_TAG" in environ or "google.colab" in modules:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in environ:
        return "kaggle"
    return "local"


@dataclass(frozen=True)
class SetupPlan:
    """What :func:`prepare` does on a platform: commands (argument lists, run in ``repo_dir``),
    environment changes (None unsets) and files it writes, in order."""

    platform: str
    repo_dir: Path
    output_dir: Path
    commands: tuple[tuple[str, ...], ...] = ()
    environment: dict[str, str | None] = field(default_factory=dict)
    files: dict[Path, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def runs_root(self) -> Path:
        return self.output_dir / "runs"


def required_pins(requirements: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (comments and other lines skipped).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "r.txt"
    >>> _ = path.write_text("# comment\\ndiffusers==0.42.1\\nlpips==0.1.4   # LPIPS proper\\n")
    >>> required_pins(path)
    {'diffusers': '0.42.1', 'lpips': '0.1.4'}
    """
    pins = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==(\S+)", line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_pins(pins: Mapping[str, str], installed: Callable[[str], str | None] = _installed) -> list[str]:
    """The pins whose installed version differs (``name==version``), in file order."""
    return [f"{name}=={version}" for name, version in pins.items() if installed(name) != version]


def plan_setup(platform: str, repo_dir: Path, *, drive_mounted: bool = False, installed=_installed,
               data_ready: bool = True, npm_available: bool = True, python: str = sys.executable) -> SetupPlan:
    """The set-up of ``platform`` for the clone in ``repo_dir`` (nothing to do for ``local``)."""
    if platform == "local":
        return SetupPlan("local", repo_dir, repo_dir, notes=("not on Colab or Kaggle: nothing installed",))
    key = "colab" if platform == "colab" and drive_mounted else ("colab-no-drive" if platform == "colab" else platform)
    output_dir, notes = OUTPUT_DIRS[key], []
    if key == "colab-no-drive":
        notes.append(f"Google Drive is not mounted: runs go to {output_dir}, which a new session loses")
    requirements = repo_dir / "requirements-gpu.txt"
    constraints = repo_dir / "scratch" / "platform-constraints.txt"
    kept = {name: installed(name) for name in KEPT_PACKAGES}
    commands: list[tuple[str, ...]] = []
    if installed("lora-style-lab") is None or missing_pins(required_pins(requirements), installed):
        commands += [(python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(repo_dir)),
                     (python, "-m", "pip", "install", "--quiet", "-r", str(requirements), "-c", str(constraints))]
    if not data_ready:
        if npm_available:
            commands += [("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"),
                         (python, "-m", "lora_core.toy", "build")]
        else:
            notes.append("npm is missing, so the emoji style sets cannot be built: bring your own image folders")
    environment = {name: None for name in OFFLINE_VARIABLES}
    environment["LSL_RUNS_ROOT"] = str(output_dir / "runs")
    files = {constraints: "".join(f"{name}=={version}\n" for name, version in kept.items() if version)}
    return SetupPlan(platform, repo_dir, output_dir, tuple(commands), environment, files, tuple(notes))


def apply_environment(changes: Mapping[str, str | None]) -> None:
    """Set or unset variables, and tell modules that read them at import: huggingface_hub's offline
    flag and the runs folder of :mod:`lora_core.runs`."""
    for name, value in changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and "HF_HUB_OFFLINE" in changes:
        constants.HF_HUB_OFFLINE = changes["HF_HUB_OFFLINE"] == "1"
    runs = sys.modules.get("lora_core.runs")
    if runs is not None and changes.get("LSL_RUNS_ROOT"):
        runs.DEFAULT_RUNS_ROOT = Path(changes["LSL_RUNS_ROOT"])


def run_setup(plan: SetupPlan, run: Callable[..., Any] = subprocess.run) -> None:
    """Write the plan's files, run its commands in ``repo_dir`` (stopping at the first failure) and
    apply its environment."""
    for path, text in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for command in plan.commands:
        print("$", " ".join(command), flush=True)
        run(list(command), cwd=plan.repo_dir, check=True)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    apply_environment(plan.environment)


def stale_modules(names: tuple[str, ...] = ("numpy", "scipy", "pandas", "PIL", "matplotlib", "transformers",
                                            "huggingface_hub", "tokenizers", "safetensors", "accelerate", "peft")
                  ) -> list[str]:
    """Modules this kernel imported whose installed version has since changed (pip upgraded them
    under it): the session must restart before they are used."""
    distributions = {"PIL": "pillow", "huggingface_hub": "huggingface-hub"}
    stale = []
    for name in names:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if module is not None and version and version != _installed(distributions.get(name, name)):
            stale.append(name)
    return stale


def mount_drive() -> bool:
    """Mount Google Drive on Colab (it asks for permission); False when it is declined or fails."""
    try:
        from google.colab import drive

        drive.mount(str(COLAB_DRIVE))
        return True
    except Exception as error:  # declined, timed out, or not in a Colab frontend
        print(f"Google Drive not mounted ({error})", flush=True)
        return False


class RestartNeeded(RuntimeError):
    """pip upgraded modules the running kernel had imported."""


def prepare(profile: str = "tiny", *, platform: str | None = None, repo_dir: Path = REPO_ROOT,
            run: Callable[..., Any] = subprocess.run, mount: Callable[[], bool] = mount_drive,
            device=None, installed: Callable[[str], str | None] = _installed) -> Any:
    """Set up this session for ``profile`` (see the module docstring); returns the profile to run:
    for ``sd15`` the :class:`~lora_core.profiles.Profile` planned for this GPU, else ``profile``.
    Raises :class:`lora_core.gpu.UnusableGPU` when ``sd15`` meets no usable GPU, and
    :class:`RestartNeeded` when the install upgraded modules this kernel had already imported.
    ``run``, ``mount``, ``device`` and ``installed`` (a package's installed version) stand in for the
    platform in tests."""
    platform = platform or detect_platform()
    mounted = platform == "colab" and mount()
    plan = plan_setup(platform, repo_dir, drive_mounted=mounted, installed=installed,
                      data_ready=(repo_dir / "data" / "styles").is_dir(), npm_available=shutil.which("npm") is not None)
    run_setup(plan, run)
    os.chdir(repo_dir)   # the chapters read data/ and write runs relative to the repository
    print(f"[set-up] {platform}: runs in {plan.runs_root if platform != 'local' else 'runs/'}", *plan.notes,
          sep="\n  ", flush=True)
    stale = stale_modules()
    if stale:
        raise RestartNeeded(f"pip upgraded {', '.join(stale)} under the running kernel: restart the session "
                            "(Colab: Runtime > Restart session; Kaggle: Run > Restart & clear outputs) and run "
                            "this cell again; it will not install twice.")
    return checked_profile(profile, device)


def checked_profile(profile: Any, device=None) -> Any:
    """Print the device check; for ``sd15`` require a usable GPU and return the profile planned for
    it with the plan's reasons, else return ``profile`` unchanged."""
    from lora_core import gpu
    from lora_core.gpu import sd15_for

    device = device or gpu.read_device_properties()
    if profile != "sd15":
        print(f"[gpu] {gpu.check_device(device).message}", flush=True)
        return profile
    print(f"[gpu] {gpu.require_usable(device).message}", flush=True)
    planned, plan = sd15_for(device)
    print(f"[plan] {plan.text}", flush=True)
    return planned
