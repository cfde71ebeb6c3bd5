"""What ran a result: library versions, device, GPU and torch build, and machine, recorded beside
every run.

>>> info = environment_info()
>>> sorted(k for k in info if k in ("torch", "diffusers", "device"))
['device', 'diffusers', 'torch']
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "torchmetrics",
             "safetensors", "lycoris-lora", "bitsandbytes", "prodigyopt", "numpy", "lora-style-lab")


def device_name(device: str | torch.device = "cpu") -> str:
    """Human-readable device: the GPU's name for CUDA, the processor for CPU."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: str | torch.device = "cpu") -> dict[str, str]:
    """Library versions, Python, platform, device, GPU and torch build, thread counts as strings."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    info["device"] = str(torch.device(device))
    info["device_name"] = device_name(device)
    from lora_core.gpu import environment_entries

    info.update(environment_entries())  # the GPU and the torch build's CUDA and kernel list
    info["cpu_count"] = str(os.cpu_count())
    info["torch_threads"] = str(torch.get_num_threads())
    return info
