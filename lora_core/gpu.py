"""The GPU before any work: which card, whether this torch build has kernels for it, which
precision it trains in, and a memory plan for a step of the studies' settings on it.

**Kernels.** A CUDA build of torch carries machine code for a list of architectures
(``torch.cuda.get_arch_list()``: ``sm_75`` runs on compute capability 7.5 and on later minor
versions of 7.x, ``compute_90`` is PTX that the driver compiles for 9.0 and newer). Kaggle's image
ships a CUDA 12.8 torch whose list starts at ``sm_70``, so on a P100 (6.0) every CUDA call fails
with "no kernel image is available for execution on the device". :func:`check_device` says so in
one message with the fix.

**Precision.** bf16 only from compute capability 8.0 on: ``torch.cuda.is_bf16_supported()`` is
True on a T4 (7.5), where bf16 is emulated and slow, so the T4 and the P100 train in fp16.

>>> p100 = DeviceProperties("Tesla P100-PCIE-16GB", (6, 0), 16 * 2**30, "2.8.0+cu128", "12.8",
...                         ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"))
>>> check_device(p100).ok, check_device(p100.replace(arch_list=("sm_50", "sm_60", "sm_70"))).ok
(False, True)
>>> mixed_precision_for(p100), mixed_precision_for(p100.replace(capability=(8, 0)))
('fp16', 'bf16')

**Memory plans** (:func:`plan_for`) are estimates, not measurements: weights and optimizer state
from parameter counts (SD v1.5's, :mod:`lora_core.sd15`), activations from a trace of one training
step of SD v1.5's UNet on the ``meta`` device (no memory, no GPU: every tensor autograd saves for
backward is counted by its size, with autocast's dtypes and memory-efficient SDPA emulated), plus
the CUDA context and 15% headroom. ``benchmarks/bench_gpu_unet.py`` records the measured
peak beside the estimate on a real GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

from lora_core.config import Config, option
from lora_core.profiles import PROFILES, SD15_IMAGES_PER_STEP, Profile

GIB = 2**30
CUDA_CONTEXT_BYTES = GIB // 2   # CUDA context, cuBLAS and cuDNN handles: outside torch's allocator
ALLOCATOR_HEADROOM = 0.85       # plan for at most 85% of the rest: fragmentation, cuDNN workspaces, estimate error
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}   # per trained parameter: two moments
TORCH_FIX_INDEX = "https://download.pytorch.org/whl/cu126"   # CUDA 12.6 builds still carry sm_60


@dataclass(frozen=True)
class DeviceProperties:
    """A device as the checks see it. ``capability`` is None for the CPU."""

    name: str
    capability: tuple[int, int] | None
    total_memory_bytes: int
    torch_version: str
    torch_cuda: str | None
    arch_list: tuple[str, ...] = ()
    torchvision_version: str | None = None

    def replace(self, **changes) -> "DeviceProperties":
        return dataclasses.replace(self, **changes)

    @property
    def is_cuda(self) -> bool:
        return self.capability is not None

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else "cpu"


# Cards of the studies, Colab and Kaggle with their memory as torch reports it (about), and two
# torch builds: Kaggle's CUDA 12.8 one (no sm_60) and a CUDA 12.6 one. For plans on paper
# (``python -m lora_core.gpu`` prints them) and the tests.
CARDS = {"P100": ("Tesla P100-PCIE-16GB", (6, 0), 17_071_734_784), "T4": ("Tesla T4", (7, 5), 15_828_320_256),
         "L4": ("NVIDIA L4", (8, 9), 23_580_639_232), "A100": ("NVIDIA A100-SXM4-40GB", (8, 0), 42_505_273_344)}
TORCH_BUILDS = {"cu128": ("2.8.0+cu128", "12.8", ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
                          "0.23.0+cu128"),
                "cu126": ("2.8.0+cu126", "12.6", ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
                          "0.23.0+cu126")}


def example_device(card: str, build: str = "cu128") -> DeviceProperties:
    """A card of :data:`CARDS` with a torch build of :data:`TORCH_BUILDS`, or the CPU (``"cpu"``).

    >>> example_device("T4").sm, example_device("cpu").is_cuda
    ('sm_75', False)
    """
    if card == "cpu":
        return DeviceProperties("x86_64", None, 16 * GIB, "2.13.0+cpu", None)
    torch_version, cuda, archs, torchvision = TORCH_BUILDS[build]
    return DeviceProperties(*CARDS[card], torch_version, cuda, archs, torchvision)


def read_device_properties(index: int = 0) -> DeviceProperties:
    """This machine's device ``index`` (the CPU when torch sees no CUDA device)."""
    import importlib.metadata
    import os
    import platform

    try:
        torchvision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision = None
    build = dict(torch_version=torch.__version__, torch_cuda=torch.version.cuda, torchvision_version=torchvision)
    if not torch.cuda.is_available():
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        return DeviceProperties(platform.processor() or platform.machine(), None, memory, **build)
    properties = torch.cuda.get_device_properties(index)
    return DeviceProperties(properties.name, (properties.major, properties.minor), properties.total_memory,
                            arch_list=tuple(torch.cuda.get_arch_list()), **build)


def _parse_arch(arch: str) -> tuple[str, tuple[int, int]] | None:
    """``"sm_86"`` -> ``("sm", (8, 6))``; ``"compute_90"`` -> ``("compute", (9, 0))``; an
    architecture-specific ``sm_90a`` runs on 9.0 only and is skipped (None)."""
    kind, _, number = arch.partition("_")
    if kind not in ("sm", "compute") or not number.isdigit():
        return None
    return kind, divmod(int(number), 10)


def has_kernels(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """Whether a build with ``arch_list`` runs on ``capability``: machine code for the same major
    version and a minor version not above it, or PTX for an architecture not above it.

    >>> has_kernels((6, 0), ("sm_70", "sm_80", "compute_90")), has_kernels((7, 5), ("sm_70",))
    (False, True)
    >>> has_kernels((12, 0), ("sm_80", "compute_90"))
    True
    """
    for kind, (major, minor) in filter(None, map(_parse_arch, arch_list)):
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= capability:
            return True
    return False


def mixed_precision_for(device: DeviceProperties) -> str:
    """``bf16`` from compute capability 8.0, ``fp16`` on older GPUs (a T4 only emulates bf16), ``no``
    (fp32) on the CPU."""
    if not device.is_cuda:
        return "no"
    return "bf16" if device.capability >= (8, 0) else "fp16"


@dataclass(frozen=True)
class DeviceCheck:
    ok: bool
    message: str
    mixed_precision: str


class UnusableGPU(RuntimeError):
    """This torch build cannot run on this GPU (or there is no GPU where one is needed)."""


def check_device(device: DeviceProperties) -> DeviceCheck:
    """One sentence on the device, its torch build and its precision; ``ok`` False with the fix when
    the build has no kernels for the card."""
    precision = mixed_precision_for(device)
    if not device.is_cuda:
        return DeviceCheck(False, f"No GPU: torch {device.torch_version} sees no CUDA device (CPU: {device.name}). "
                                  "The sd15 profile needs one (Colab: Runtime > Change runtime type > T4 GPU; "
                                  "Kaggle: Settings > Accelerator > GPU T4 x2 or P100); the tiny and smoke "
                                  "profiles run on the CPU.", precision)
    card = (f"{device.name}: compute capability {device.capability[0]}.{device.capability[1]} ({device.sm}), "
            f"{device.total_memory_bytes / GIB:.1f} GiB; torch {device.torch_version} (CUDA {device.torch_cuda})")
    if not has_kernels(device.capability, device.arch_list):
        return DeviceCheck(False, f"{card} has no kernels for this card (built for {' '.join(device.arch_list)}), "
                                  "so every CUDA call would fail with 'no kernel image is available for execution "
                                  f"on the device'. Fix: {torch_fix(device)}", precision)
    note = " (bf16 needs compute capability 8.0: this card only emulates it)" if precision == "fp16" else ""
    return DeviceCheck(True, f"{card} has kernels for it; mixed precision {precision}{note}.", precision)


def torch_fix(device: DeviceProperties) -> str:
    """The install command that gives ``device`` a torch with kernels for it (same versions, built
    for CUDA 12.6), or the other way out: a newer card."""
    versions = f"torch=={device.torch_version.split('+')[0]}"
    if device.torchvision_version:
        versions += f" torchvision=={device.torchvision_version.split('+')[0]}"
    return (f"install the same torch built for CUDA 12.6, which still carries sm_60: "
            f"`pip install {versions} --index-url {TORCH_FIX_INDEX}` and restart the session (if that index "
            "lacks this version, take the newest it has); or switch to a T4 or L4 (Kaggle: 'GPU T4 x2').")


def require_usable(device: DeviceProperties | None = None) -> DeviceCheck:
    """:func:`check_device` of ``device`` (this machine's by default); raises :class:`UnusableGPU`
    with its message when it is not ok."""
    result = check_device(device or read_device_properties())
    if not result.ok:
        raise UnusableGPU(result.message)
    return result


def environment_entries() -> dict[str, str]:
    """GPU and torch build for run summaries (``lora_core.environment.environment_info``).

    >>> sorted(environment_entries())
    ['gpu', 'gpu_compute_capability', 'gpu_memory_gib', 'torch_arch_list', 'torch_cuda']
    """
    device = read_device_properties()
    return {"gpu": device.name if device.is_cuda else "none",
            "gpu_compute_capability": f"{device.capability[0]}.{device.capability[1]}" if device.is_cuda else "",
            "gpu_memory_gib": f"{device.total_memory_bytes / GIB:.1f}" if device.is_cuda else "",
            "torch_cuda": device.torch_cuda or "none (CPU build)",
            "torch_arch_list": " ".join(torch.cuda.get_arch_list()) if torch.version.cuda else ""}


# ---------------------------------------------------------------------------------------------
# 8-bit Adam: bitsandbytes loads the library built for torch's CUDA version; which cards that
# library has kernels for is read from the library itself (measured for bitsandbytes 0.50.2:
# the CUDA 12.6 library starts at sm_60, the CUDA 12.8 one at sm_70, like torch's builds).


def fatbin_architectures(library: str | Path) -> tuple[str, ...]:
    """``sm_XY`` / ``compute_XY`` entries of the CUDA fat binaries inside a shared library (the
    fatbin container's entry headers: kind 1 = PTX, 2 = machine code; architecture at byte 28)."""
    import struct

    data = Path(library).read_bytes()
    magic, found = struct.pack("<I", 0xBA55ED50), set()
    position = data.find(magic)
    while position != -1:
        header_size, size = struct.unpack_from("<HQ", data, position + 6)
        entry, end = position + header_size, position + header_size + size
        while entry + 32 <= min(end, len(data)):
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            number = struct.unpack_from("<I", data, entry + 28)[0]
            found.add(f"{'compute' if kind == 1 else 'sm'}_{number}")
            if entry_header == 0:
                break
            entry += entry_header + payload
        position = data.find(magic, position + 4)
    return tuple(sorted(found, key=lambda a: (_parse_arch(a) or ("", (0, 0)))[1]))


def bitsandbytes_library(torch_cuda: str | None) -> Path | None:
    """The library bitsandbytes would load for this CUDA version (None without either)."""
    import importlib.util

    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations or not torch_cuda:
        return None
    library = Path(list(spec.submodule_search_locations)[0]) / f"libbitsandbytes_cuda{torch_cuda.replace('.', '')}.so"
    return library if library.exists() else None


def supports_8bit_adam(device: DeviceProperties) -> tuple[bool, str]:
    """Whether bitsandbytes' AdamW8bit runs on ``device``, and why (read from its library)."""
    if not device.is_cuda:
        return True, "bitsandbytes' 8-bit AdamW runs on the CPU"
    library = bitsandbytes_library(device.torch_cuda)
    if library is None:
        return False, f"bitsandbytes has no library for CUDA {device.torch_cuda} here"
    archs = fatbin_architectures(library)
    if has_kernels(device.capability, archs):
        return True, f"bitsandbytes' {library.name} has kernels for {device.sm}"
    return False, f"bitsandbytes' {library.name} has no kernels for {device.sm} (built for {' '.join(archs)})"


# ---------------------------------------------------------------------------------------------
# activations: one training step of SD v1.5's UNet traced on the meta device


@dataclass(frozen=True)
class ActivationTrace:
    """Bytes autograd keeps for backward in one forward of one image: ``saved`` in all, and with
    gradient checkpointing ``checkpointed`` (what stays outside the checkpointed blocks plus their
    inputs) and ``largest_block`` (what backward recomputes at once); ``largest_tensor`` sizes the
    transient gradients."""

    saved: int
    checkpointed: int
    largest_block: int
    largest_tensor: int


class _SavedTensorLedger:
    """Storage sizes of the tensors autograd saves, outside and inside checkpointed blocks. The
    model's own weights (saved for the gradients of their inputs) are skipped: they are memory
    anyway, counted as weights."""

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.outside: dict[int, int] = {}
        self.blocks: list[dict[int, int]] = []
        self.current: dict[int, int] | None = None
        tensors = [*model.parameters(), *model.buffers()] if model is not None else []
        self.weights = {tensor.untyped_storage()._cdata for tensor in tensors}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.weights:
            (self.current if self.current is not None else self.outside)[storage._cdata] = storage.nbytes()
        return tensor

    def checkpoint(self, module, *args):
        """Run ``module`` as diffusers' gradient checkpointing would: its inputs stay, what it saves
        is counted as the block's (recomputed in backward)."""
        for value in args:
            if isinstance(value, torch.Tensor):
                self.outside[value.untyped_storage()._cdata] = value.untyped_storage().nbytes()
        self.current = {}
        try:
            return module(*args)
        finally:
            self.blocks.append(self.current)
            self.current = None

    def trace(self) -> ActivationTrace:
        every = dict(self.outside)
        blocks = [{k: v for k, v in block.items() if k not in self.outside} for block in self.blocks]
        for block in blocks:
            every.update(block)
        largest_block = max((sum(block.values()) for block in blocks), default=0)
        return ActivationTrace(saved=sum(every.values()), checkpointed=sum(self.outside.values()),
                               largest_block=largest_block, largest_tensor=max(every.values(), default=0))


class _EfficientAttention(torch.autograd.Function):
    """Stands in for SDPA's memory-efficient and flash kernels: backward keeps q, k, v, the output
    and a float32 log-sum-exp per query, never the attention matrix."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@contextlib.contextmanager
def _autocast_on_meta(half: torch.dtype | None):
    """Autocast's dtypes on the meta device (where autocast does nothing): normalisations return
    float32, convolutions and matmuls cast their inputs to ``half``; SDPA is memory-efficient."""
    functional = torch.nn.functional
    originals = {name: getattr(functional, name) for name in ("group_norm", "layer_norm", "conv2d", "linear")}

    def to_half(function):
        return lambda x, weight, *rest, **kw: function(x.to(weight.dtype), weight, *rest, **kw)

    def to_float(function):
        return lambda x, *rest, **kw: function(x.float(), *[r.float() if isinstance(r, torch.Tensor) else r
                                                            for r in rest], **kw)

    def attention(query, key, value, *rest, **kw):
        return _EfficientAttention.apply(query, key.to(query.dtype), value.to(query.dtype))

    patches = {"scaled_dot_product_attention": attention}
    if half is not None:
        patches.update(group_norm=to_float(originals["group_norm"]), layer_norm=to_float(originals["layer_norm"]),
                       conv2d=to_half(originals["conv2d"]), linear=to_half(originals["linear"]))
    with contextlib.ExitStack() as stack:
        for name, replacement in patches.items():
            stack.enter_context(mock.patch.object(functional, name, replacement))
        yield


@functools.lru_cache(maxsize=16)
def trace_activations(method: str, resolution: int, half: bool) -> ActivationTrace:
    """:class:`ActivationTrace` of one image through SD v1.5's UNet at ``resolution`` px, training
    ``method`` (``lora``: the attention projections need gradients, as LoRA's inputs; ``full``: every
    weight), frozen weights in half precision (``half``) or float32. Takes about a second."""
    from lora_core import sd15
    from lora_core.adapters.lora import ATTENTION_TARGETS

    dtype = torch.float16 if half else torch.float32
    unet = sd15.build_components("meta", dtype)[0].requires_grad_(method == "full")
    if method == "lora":
        for name, module in unet.named_modules():
            if name.endswith(ATTENTION_TARGETS):
                module.weight.requires_grad_(True)
    ledger = _SavedTensorLedger(unet)
    unet.enable_gradient_checkpointing(gradient_checkpointing_func=ledger.checkpoint)
    unet.train()
    side = resolution // 8
    latents = torch.empty(1, 4, side, side, device="meta", dtype=dtype)
    text = torch.empty(1, 77, sd15.UNET["cross_attention_dim"], device="meta", dtype=dtype)
    with _autocast_on_meta(dtype if half else None), \
            torch.autograd.graph.saved_tensors_hooks(ledger.pack, lambda tensor: tensor):
        unet(latents, torch.zeros(1, dtype=torch.long, device="meta"), text)
    return ledger.trace()


@functools.lru_cache(maxsize=8)
def lora_parameter_count(rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on SD v1.5's UNet attention projections: r x (in + out)
    per projection.

    >>> lora_parameter_count(4)
    797184
    """
    from lora_core import sd15
    from lora_core.adapters.lora import ATTENTION_TARGETS

    unet = sd15.build_components("meta")[0]
    return sum(rank * (module.in_features + module.out_features) for name, module in unet.named_modules()
               if name.endswith(ATTENTION_TARGETS) and isinstance(module, torch.nn.Linear))


# ---------------------------------------------------------------------------------------------
# memory plans


@dataclass(frozen=True)
class StudySettings(Config):
    """What a plan must fit: the studies' step on SD v1.5, whatever the card."""

    method: str = option("lora", "what trains: lora (LoRA on the UNet's attention projections) or full "
                                 "(every UNet weight, as DreamBooth)")
    resolution: int = option(512, "training resolution in pixels")
    images_per_step: int = option(4, "images per optimizer step = micro-batch x gradient accumulation "
                                     "(the diffusers LoRA example: 1 x 4)")
    rank: int = option(16, "LoRA rank r")
    train_text_encoder: bool = option(False, "the text encoder trains too (full: all of it; lora: LoRA on it)")
    optimizer: str = option("adamw8bit", "adamw8bit (bitsandbytes, where it has kernels for the card) or adamw")

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"StudySettings: method must be lora or full, got {self.method!r}")
        if self.optimizer not in OPTIMIZER_STATE_BYTES:
            raise ValueError(f"StudySettings: optimizer must be one of {', '.join(OPTIMIZER_STATE_BYTES)}, "
                             f"got {self.optimizer!r}")
        if self.images_per_step < 1 or self.resolution % 64:
            raise ValueError(f"StudySettings: images_per_step must be >= 1 and resolution a multiple of 64, got "
                             f"{self.images_per_step} and {self.resolution}")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step, by what holds them (see the module docstring)."""

    weights: int
    trained_state: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return self.weights + self.trained_state + self.activations + self.transient


def estimate_step_memory(study: StudySettings, batch_size: int, half: bool, checkpointing: bool,
                         optimizer: str) -> MemoryEstimate:
    """Weights (frozen ones in half precision when ``half``), the trained parameters' fp32 copy,
    gradient and optimizer moments (plus autocast's half copy), the activations backward keeps for
    ``batch_size`` images (with ``checkpointing``: the blocks' inputs plus one block recomputed), and
    a gradient and its input at the widest layer."""
    from lora_core import sd15

    counts = sd15.parameter_counts()
    trained = counts["unet"] if study.method == "full" else lora_parameter_count(study.rank)
    if study.train_text_encoder:
        trained += counts["text_encoder"] if study.method == "full" else 0  # a text-encoder LoRA: < 1%
    frozen = sum(counts.values()) - trained
    trace = trace_activations(study.method, study.resolution, half)
    activations = trace.checkpointed + trace.largest_block if checkpointing else trace.saved
    per_trained = 4 + 4 + OPTIMIZER_STATE_BYTES[optimizer] + (2 if half else 0)
    return MemoryEstimate(weights=frozen * (2 if half else 4), trained_state=trained * per_trained,
                          activations=activations * batch_size, transient=2 * trace.largest_tensor * batch_size)


@dataclass(frozen=True)
class Plan:
    """Settings for a card, and why: ``reasons`` read as the plan's explanation (:attr:`text`)."""

    device: str
    batch_size: int
    gradient_accumulation_steps: int
    mixed_precision: str
    gradient_checkpointing: bool
    optimizer: str
    fits: bool
    estimated_bytes: int
    budget_bytes: int
    reasons: tuple[str, ...]
    attention: str = "sdpa"
    cache_latents: bool = True

    @property
    def text(self) -> str:
        return " ".join(self.reasons)

    def train_settings(self) -> dict[str, object]:
        """The ``TrainConfig`` fields this plan sets."""
        return {"batch_size": self.batch_size, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "mixed_precision": self.mixed_precision, "gradient_checkpointing": self.gradient_checkpointing,
                "optimizer": self.optimizer, "attention": self.attention, "cache_latents": self.cache_latents}


def memory_budget(device: DeviceProperties) -> int:
    """Bytes a step may use: the card's memory less the CUDA context, times the allocator headroom."""
    return int((device.total_memory_bytes - CUDA_CONTEXT_BYTES) * ALLOCATOR_HEADROOM)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def plan_for(device: DeviceProperties, study: StudySettings = StudySettings()) -> Plan:
    """The micro-batch, gradient accumulation, precision, checkpointing and optimizer for ``study``
    on ``device``, with the reasoning. The largest micro-batch that divides ``images_per_step`` and
    fits without gradient checkpointing wins (checkpointing recomputes the forward: about a third
    more compute per step); only when none fits is checkpointing switched on."""
    precision = mixed_precision_for(device)
    if not device.is_cuda:
        return Plan(device.name, study.images_per_step, 1, "no", False, "adamw", True, 0, 0, (
            "CPU: float32 (no fast half precision on a CPU) and plain AdamW; the whole step in one "
            "micro-batch, memory is the host's and not planned.",))
    optimizer, optimizer_reason = _optimizer_for(device, study)
    budget, half = memory_budget(device), precision != "no"
    reasons = [f"{device.name}: {_gib(device.total_memory_bytes)}, of which a step may use {_gib(budget)} (less "
               f"{_gib(CUDA_CONTEXT_BYTES)} CUDA context, {100 - round(100 * ALLOCATOR_HEADROOM)}% allocator "
               f"headroom). Mixed precision {precision}{' (compute capability < 8.0: no native bf16)' if precision == 'fp16' else ''}; "
               f"latents cached (no VAE in the step); SDPA attention. {optimizer_reason}."]
    divisors = [b for b in range(study.images_per_step, 0, -1) if study.images_per_step % b == 0]
    for checkpointing in (False, True):
        for batch in divisors:
            estimate = estimate_step_memory(study, batch, half, checkpointing, optimizer)
            if estimate.total <= budget:
                reasons.append(_choice_reason(study, batch, checkpointing, estimate))
                return Plan(device.name, batch, study.images_per_step // batch, precision, checkpointing, optimizer,
                            True, estimate.total, budget, tuple(reasons))
    smallest = estimate_step_memory(study, 1, half, True, optimizer)
    reasons.append(f"Does not fit: even one image with gradient checkpointing needs about {_gib(smallest.total)} "
                   f"({_gib(smallest.weights)} weights, {_gib(smallest.trained_state)} trained state). Use a card "
                   "with more memory, a lower resolution, or LoRA instead of a full fine-tune.")
    return Plan(device.name, 1, study.images_per_step, precision, True, optimizer, False, smallest.total, budget,
                tuple(reasons))


def _optimizer_for(device: DeviceProperties, study: StudySettings) -> tuple[str, str]:
    if study.optimizer != "adamw8bit":
        return study.optimizer, f"Optimizer {study.optimizer} as asked"
    supported, why = supports_8bit_adam(device)
    if supported:
        return "adamw8bit", f"8-bit AdamW ({why})"
    return "adamw", f"AdamW in fp32, not 8-bit: {why}"


def _choice_reason(study: StudySettings, batch: int, checkpointing: bool, estimate: MemoryEstimate) -> str:
    accumulation = study.images_per_step // batch
    parts = (f"{_gib(estimate.weights)} weights, {_gib(estimate.trained_state)} trained parameters with "
             f"gradients and optimizer state, {_gib(estimate.activations + estimate.transient)} activations")
    how = ("with gradient checkpointing, because no micro-batch fits without it" if checkpointing else
           "without gradient checkpointing (it would recompute the forward, about a third more compute)")
    larger = "" if batch == study.images_per_step else f"; a micro-batch of {_next_divisor(study, batch)} would not fit"
    return (f"Micro-batch {batch} x {accumulation} accumulation step{'s' if accumulation > 1 else ''} = "
            f"{study.images_per_step} images per step at {study.resolution} px, {how}: about "
            f"{_gib(estimate.total)} ({parts}){larger}.")


def _next_divisor(study: StudySettings, batch: int) -> int:
    return min(b for b in range(batch + 1, study.images_per_step + 1) if study.images_per_step % b == 0)


def sd15_study_settings() -> StudySettings:
    """The step every ``sd15`` plan must fit: a rank-16 LoRA on SD v1.5 at 512 px, four images."""
    sd15 = PROFILES["sd15"]
    return StudySettings(method="lora", resolution=sd15.resolution, images_per_step=SD15_IMAGES_PER_STEP,
                         rank=sd15.lora_rank, optimizer="adamw8bit")


def sd15_for(device: DeviceProperties) -> tuple[Profile, Plan]:
    """The ``sd15`` profile planned for ``device`` (``lora_core.gpu.plan_for``), and the plan that
    says why. On the CPU: float32, plain AdamW and the whole step in one micro-batch.

    >>> profile, plan = sd15_for(DeviceProperties("cpu", None, 0, "2.13.0+cpu", None))
    >>> profile.batch_size, profile.mixed_precision, profile.device
    (4, 'no', 'cpu')
    """
    plan = plan_for(device, sd15_study_settings())
    settings = {key: value for key, value in plan.train_settings().items() if key in Profile.help()}
    return PROFILES["sd15"].replace(**settings, device="cuda" if device.is_cuda else "cpu"), plan


def main(argv: list[str] | None = None) -> int:
    """Print this machine's device check and the sd15 LoRA plan for it and for :data:`CARDS`."""
    from lora_core.cli import command_parser, run_command

    parser = command_parser("python -m lora_core.gpu", "The GPU check and the sd15 memory plans.")

    def command(args) -> None:
        device = read_device_properties()
        print(f"this machine: {check_device(device).message}\n  {plan_for(device, sd15_study_settings()).text}")
        for card in CARDS:
            plan = plan_for(example_device(card, "cu126"), sd15_study_settings())
            print(f"{card}: micro-batch {plan.batch_size} x {plan.gradient_accumulation_steps}, "
                  f"{plan.mixed_precision}, checkpointing {'on' if plan.gradient_checkpointing else 'off'}, "
                  f"{plan.optimizer}, about {_gib(plan.estimated_bytes)} of {_gib(plan.budget_bytes)}")

    return run_command(command, parser, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
