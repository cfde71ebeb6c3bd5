"""Download, here, the wheels the GPU machine lacks, into the git-ignored ``wheels/`` folder that
travels with the working tree.

The GPU image has torch (with CUDA), torchvision, transformers, peft, accelerate, torchmetrics and
timm, but not diffusers, and it reaches no registry. The benchmarks need this project's pins:
diffusers and the libraries it was tested with, and everything they require that is not torch's
own stack. The list is the dependency closure of those pins as this environment installed them
(same versions), less what the image must keep (torch, torchvision, triton, the nvidia-* CUDA
libraries, numpy and pillow, which its torch and torchvision were built against).

    python benchmarks/download_gpu_wheels.py [--python-version 3.11]    # here: -> wheels/
    pip install --no-index --no-deps wheels/*.whl                      # there, from the repository root
    python benchmarks/bench_gpu_unet.py                                # (likewise _peer, _scaling)

Wheels only (``--only-binary=:all:``) for manylinux x86_64 and the GPU image's Python version.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / "wheels"
ROOTS = ("diffusers", "transformers", "tokenizers", "huggingface-hub", "safetensors", "peft", "accelerate")
KEPT_ON_THE_IMAGE = re.compile(r"^(torch|torchvision|triton|numpy|pillow|nvidia-.*|setuptools|pip)$")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots=ROOTS, python_version: str = "3.11") -> dict[str, str]:
    """name -> installed version for ``roots`` and what they require (markers evaluated for Linux
    x86_64 and ``python_version``; extras not followed), less :data:`KEPT_ON_THE_IMAGE`."""
    environment = {"python_version": python_version, "sys_platform": "linux", "platform_machine": "x86_64",
                   "platform_system": "Linux", "extra": ""}
    found: dict[str, str] = {}
    pending = [_canonical(name) for name in roots]
    while pending:
        name = pending.pop()
        if name in found or KEPT_ON_THE_IMAGE.match(name):
            continue
        distribution = importlib.metadata.distribution(name)
        found[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(_canonical(requirement.name))
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the GPU image's Python (default: this one)")
    parser.add_argument("--dest", type=Path, default=WHEELS)
    args = parser.parse_args(argv)
    pins = [f"{name}=={version}" for name, version in closure(python_version=args.python_version).items()]
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(args.dest),
               "--python-version", args.python_version, *platforms, *pins]
    print(" ".join(pins))
    done = subprocess.run(command)
    if done.returncode == 0:
        size = sum(path.stat().st_size for path in args.dest.glob("*.whl"))
        print(f"{len(list(args.dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {args.dest}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
