"""GPU checks and memory plans with mocked devices: the cards the studies used (P100, T4), an A100,
and no GPU. Nothing here needs a GPU."""
import struct
import types

import pytest
import torch

from lora_core import gpu
from lora_core.gpu import StudySettings, check_device, plan_for

CU128 = gpu.TORCH_BUILDS["cu128"][2]   # Kaggle's torch 2.8 + CUDA 12.8: no sm_60
P100_CU128, P100_CU126 = gpu.example_device("P100", "cu128"), gpu.example_device("P100", "cu126")
T4, A100, CPU = gpu.example_device("T4"), gpu.example_device("A100"), gpu.example_device("cpu")


def test_p100_with_a_cuda_12_8_torch_gets_one_message_with_the_fix():
    result = check_device(P100_CU128)
    assert not result.ok and "\n" not in result.message
    for words in ("Tesla P100-PCIE-16GB", "compute capability 6.0 (sm_60)", "torch 2.8.0+cu128 (CUDA 12.8)",
                  "no kernel image is available", "CUDA 12.6, which still carries sm_60",
                  "pip install torch==2.8.0 torchvision==0.23.0 --index-url https://download.pytorch.org/whl/cu126",
                  "T4 or L4"):
        assert words in result.message
    with pytest.raises(gpu.UnusableGPU, match=r"P100.*no kernels for this card.*whl/cu126"):
        gpu.require_usable(P100_CU128)


@pytest.mark.parametrize("device, precision", [(P100_CU126, "fp16"), (T4, "fp16"), (A100, "bf16")])
def test_cards_with_kernels_pass_and_bf16_needs_compute_capability_8(device, precision, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers
    result = check_device(device)
    assert result.ok and result.mixed_precision == precision
    assert f"mixed precision {precision}" in result.message
    assert ("only emulates it" in result.message) == (precision == "fp16")


def test_no_gpu_says_where_to_get_one_and_trains_in_fp32():
    result = check_device(CPU)
    assert not result.ok and result.mixed_precision == "no"
    assert result.message.startswith("No GPU: torch 2.13.0+cpu sees no CUDA device")
    assert "Colab: Runtime > Change runtime type > T4 GPU" in result.message and "Kaggle" in result.message


def test_device_properties_are_read_from_torch(monkeypatch):
    """A P100 as a CUDA 12.8 torch reports it: available, its properties, an arch list without sm_60."""
    properties = types.SimpleNamespace(name="Tesla P100-PCIE-16GB", major=6, minor=0, total_memory=17_071_734_784)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(CU128))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch, "__version__", "2.8.0+cu128")
    device = gpu.read_device_properties()
    assert device.replace(torchvision_version=P100_CU128.torchvision_version) == P100_CU128
    assert not check_device(device).ok


@pytest.mark.parametrize("capability, archs, expected", [
    ((6, 0), ("sm_70", "compute_70"), False),      # PTX runs only on its architecture and newer
    ((6, 1), ("sm_60",), True),                     # machine code runs on later minor versions
    ((7, 0), ("sm_60",), False),                    # ... but not on another major version
    ((9, 0), ("sm_90a",), False),                   # arch-specific code is not counted
    ((12, 0), ("sm_80", "compute_90"), True),       # the driver compiles PTX for newer cards
])
def test_kernel_rules(capability, archs, expected):
    assert gpu.has_kernels(capability, archs) is expected


def test_the_cuda_12_6_build_reaches_every_card_and_the_12_8_one_all_but_the_p100():
    for card in gpu.CARDS:
        assert check_device(gpu.example_device(card, "cu126")).ok
        assert check_device(gpu.example_device(card, "cu128")).ok is (card != "P100")


def _fatbin(entries):
    """A fat binary container as nvcc writes it: header, then per entry a 64-byte header
    (kind, version, header size, payload size, ..., architecture at byte 28) and its payload."""
    body = b""
    for kind, arch, payload in entries:
        header = struct.pack("<HHIQ", kind, 0x0101, 64, len(payload)) + bytes(12) + struct.pack("<I", arch)
        body += header.ljust(64, b"\0") + payload
    return b"ELF..." + struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body + b"tail"


def test_fatbin_architectures_are_read_from_the_container(tmp_path):
    library = tmp_path / "lib.so"
    library.write_bytes(_fatbin([(2, 60, b"x" * 40), (2, 75, b"y" * 8), (1, 90, b"ptx")]) * 2)
    assert gpu.fatbin_architectures(library) == ("sm_60", "sm_75", "compute_90")


def test_bitsandbytes_cuda_12_6_library_reaches_the_p100_and_the_12_8_one_does_not():
    """Measured on the installed bitsandbytes: 8-bit Adam on a P100 needs the CUDA 12.6 build too."""
    if gpu.bitsandbytes_library("12.6") is None or gpu.bitsandbytes_library("12.8") is None:
        pytest.skip("this bitsandbytes has no CUDA 12.6 and 12.8 libraries")
    assert "sm_60" in gpu.fatbin_architectures(gpu.bitsandbytes_library("12.6"))
    assert gpu.fatbin_architectures(gpu.bitsandbytes_library("12.8"))[0] == "sm_70"  # oldest first
    assert gpu.supports_8bit_adam(P100_CU126)[0] and gpu.supports_8bit_adam(T4)[0]
    supported, why = gpu.supports_8bit_adam(P100_CU128)
    assert not supported and "libbitsandbytes_cuda128.so has no kernels for sm_60" in why


def test_run_summaries_get_the_gpu_and_the_torch_build():
    from lora_core.environment import environment_info

    info = environment_info("cpu")
    assert info["torch_cuda"] == (torch.version.cuda or "none (CPU build)")
    assert info["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")


# ---- memory ------------------------------------------------------------------------------------


def test_lora_parameters_match_the_count_by_hand():
    """Per transformer block of width d: self-attention q, k, v, out (d -> d) and cross-attention q,
    out (d -> d), k, v (768 -> d): r x (14 d + 1536). SD v1.5 has five blocks at 320 and 640, six at
    1280 (two down, one mid, three up)."""
    by_hand = sum(n * (14 * d + 2 * 768) for n, d in ((5, 320), (5, 640), (6, 1280)))
    assert gpu.lora_parameter_count(1) == by_hand == 199_296
    assert gpu.lora_parameter_count(16) == 16 * by_hand


def test_the_ledger_counts_what_backward_keeps_once():
    """Linear(8 -> 16) with a trained weight keeps its input; the SDPA stand-in keeps q, k, v, the
    output and a float32 log-sum-exp per query, never the L x L attention matrix."""
    ledger = gpu._SavedTensorLedger()
    linear = torch.nn.Linear(8, 16, device="meta")
    x = torch.empty(4, 8, device="meta")
    q = torch.empty(2, 3, 64, 5, device="meta", dtype=torch.float16, requires_grad=True)
    with gpu._autocast_on_meta(None), torch.autograd.graph.saved_tensors_hooks(ledger.pack, lambda t: t):
        linear(x)
        linear(x)  # the same input saved twice counts once
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    trace = ledger.trace()
    assert trace.saved == 4 * 8 * 4 + 2 * 3 * 64 * 5 * 2 * 2 + 2 * 3 * 64 * 4
    assert trace.largest_tensor == 2 * 3 * 64 * 5 * 2


def test_normalisations_run_in_float32_under_the_autocast_stand_in():
    x = torch.empty(1, 32, 4, 4, device="meta", dtype=torch.float16)
    conv = torch.nn.Conv2d(32, 32, 3, device="meta", dtype=torch.float16)
    with gpu._autocast_on_meta(torch.float16):
        normed = torch.nn.functional.group_norm(x, 8)
        assert normed.dtype == torch.float32 and conv(normed).dtype == torch.float16


def test_checkpointing_keeps_less_than_a_plain_step_and_full_keeps_more_than_lora():
    lora, full = gpu.trace_activations("lora", 512, True), gpu.trace_activations("full", 512, True)
    assert lora.checkpointed + lora.largest_block < lora.saved / 4
    assert full.saved > lora.saved
    quarter = gpu.trace_activations("lora", 256, True).saved / lora.saved  # 4x fewer latent pixels
    assert 0.24 < quarter < 0.27, quarter


def test_weights_and_trained_state_by_parameter_count():
    from lora_core import sd15

    counts, lora = sd15.parameter_counts(), gpu.lora_parameter_count(16)
    estimate = gpu.estimate_step_memory(StudySettings(), 2, half=True, checkpointing=False, optimizer="adamw8bit")
    assert estimate.weights == (sum(counts.values()) - lora) * 2
    assert estimate.trained_state == lora * (4 + 4 + 2 + 2)  # fp32 copy, gradient, 8-bit moments, fp16 copy
    one = gpu.estimate_step_memory(StudySettings(), 1, half=True, checkpointing=False, optimizer="adamw8bit")
    assert estimate.activations == 2 * one.activations


def _assert_largest_fitting(plan, device, study):
    """The plan's micro-batch fits; the next larger divisor of the images per step would not."""
    assert plan.fits and plan.batch_size * plan.gradient_accumulation_steps == study.images_per_step
    assert plan.estimated_bytes <= plan.budget_bytes == gpu.memory_budget(device)
    larger = [b for b in range(plan.batch_size + 1, study.images_per_step + 1) if study.images_per_step % b == 0]
    if larger:
        half = plan.mixed_precision != "no"
        estimate = gpu.estimate_step_memory(study, larger[0], half, plan.gradient_checkpointing, plan.optimizer)
        assert estimate.total > plan.budget_bytes


@pytest.mark.parametrize("device, images, batch, accumulation, precision", [
    (P100_CU126, 4, 4, 1, "fp16"), (T4, 4, 4, 1, "fp16"), (A100, 4, 4, 1, "bf16"),
    (T4, 16, 8, 2, "fp16"), (A100, 16, 16, 1, "bf16")])
def test_lora_plans_for_the_studies_cards(device, images, batch, accumulation, precision):
    study = StudySettings(images_per_step=images)
    plan = plan_for(device, study)
    assert (plan.batch_size, plan.gradient_accumulation_steps, plan.mixed_precision) == (batch, accumulation, precision)
    assert plan.optimizer == "adamw8bit" and not plan.gradient_checkpointing and plan.attention == "sdpa"
    _assert_largest_fitting(plan, device, study)
    assert plan.text.startswith(f"{device.name}: ") and f"Mixed precision {precision}" in plan.text
    assert f"Micro-batch {batch} x {accumulation} accumulation" in plan.text and "8-bit AdamW" in plan.text
    if batch < study.images_per_step:
        assert f"a micro-batch of {2 * batch} would not fit" in plan.text


def test_a_full_fine_tune_splits_or_checkpoints_on_16_gb():
    """UNet and text encoder trained, two images per step: the P100's extra gigabyte takes one image
    without checkpointing (accumulating two); the T4 needs checkpointing, which then takes both."""
    study = StudySettings(method="full", train_text_encoder=True, images_per_step=2)
    p100, t4, a100 = (plan_for(device, study) for device in (P100_CU126, T4, A100))
    assert (p100.batch_size, p100.gradient_accumulation_steps, p100.gradient_checkpointing) == (1, 2, False)
    assert (t4.batch_size, t4.gradient_accumulation_steps, t4.gradient_checkpointing) == (2, 1, True)
    assert "with gradient checkpointing, because no micro-batch fits without it" in t4.text
    assert (a100.batch_size, a100.gradient_checkpointing) == (2, False)
    for plan, device in ((p100, P100_CU126), (a100, A100)):
        _assert_largest_fitting(plan, device, study)


def test_what_does_not_fit_is_said_with_the_way_out():
    small = T4.replace(name="8 GB card", total_memory_bytes=8 * 2**30)
    plan = plan_for(small, StudySettings(method="full"))
    assert not plan.fits and "Does not fit: even one image with gradient checkpointing needs about" in plan.text


def test_8bit_adam_falls_back_where_bitsandbytes_has_no_kernels(monkeypatch):
    monkeypatch.setattr(gpu, "supports_8bit_adam", lambda device: (False, "no kernels for sm_60 (test)"))
    plan = plan_for(P100_CU128, StudySettings())
    assert plan.optimizer == "adamw" and "AdamW in fp32, not 8-bit: no kernels for sm_60 (test)" in plan.text


def test_cpu_plan_is_fp32_in_one_micro_batch():
    plan = plan_for(CPU, StudySettings())
    assert (plan.batch_size, plan.gradient_accumulation_steps, plan.mixed_precision, plan.optimizer) == (4, 1, "no", "adamw")
    assert plan.text.startswith("CPU: float32")


def test_the_sd15_profile_is_the_t4_plan_and_follows_the_card():
    from lora_core.gpu import sd15_for
    from lora_core.profiles import PROFILES

    profile, plan = sd15_for(T4)
    assert profile == PROFILES["sd15"], "the static sd15 profile must be the T4's plan"
    a100, _ = sd15_for(A100)
    assert (a100.batch_size, a100.gradient_accumulation_steps, a100.mixed_precision) == (4, 1, "bf16")
    cpu, _ = sd15_for(CPU)
    assert (cpu.device, cpu.mixed_precision, cpu.optimizer) == ("cpu", "no", "adamw")


def test_bad_study_settings_are_refused():
    with pytest.raises(ValueError, match="StudySettings: method must be lora or full, got 'lokr'"):
        StudySettings(method="lokr")
    with pytest.raises(ValueError, match="resolution a multiple of 64, got 4 and 500"):
        StudySettings(resolution=500)
