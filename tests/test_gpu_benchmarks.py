"""The GPU benchmarks import, run their --dry-run path on the CPU (the same code, the tiny model),
write JSON and a plot stamped with date, device and versions, refuse to pretend without a GPU,
and count SD v1.5's model FLOPs as published; the appendix shows their results or says that no
GPU was available."""
import importlib
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("bench_gpu_unet", "bench_gpu_peer", "bench_gpu_scaling")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bench(monkeypatch, one_thread):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Every benchmark's --dry-run, once, into a temporary folder."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("dry")
        return out, {name: importlib.import_module(name).main(["--dry-run", "--out", str(out)]) for name in BENCHMARKS}
    finally:
        torch.set_num_threads(previous)
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_dry_run_writes_the_json_and_the_plot_with_date_device_and_versions(dry_runs, name):
    out, payloads = dry_runs
    payload = payloads[name]
    assert json.loads((out / f"{name}.json").read_text()) == json.loads(json.dumps(payload))
    assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert payload["benchmark"] == name and payload["dry_run"] is True and "mean nothing" in payload["weights"]
    assert payload["versions"]["torch"] == torch.__version__ and payload["versions"]["diffusers"]
    assert payload["date_utc"].endswith("Z") and payload["device"]
    rows = payload.get("steps") or payload["rows"]
    assert rows and all(row["s_per_step"] > 0 for row in rows)


def test_the_unet_benchmark_counts_flops_for_lora_and_full_steps(dry_runs):
    steps = {row["name"]: row for row in dry_runs[1]["bench_gpu_unet"]["steps"]}
    assert set(steps) == {"lora r16", "lora r128", "full fine-tune"}
    full, lora = steps["full fine-tune"], steps["lora r16"]
    # a full step is a forward and two backward matmuls per weight, less the input gradient of the
    # first layer (the latents need none)
    assert 2.7 < full["step_tflop_per_image"] / full["forward_tflop_per_image"] <= 3.0
    assert full["forward_tflop_per_image"] < lora["step_tflop_per_image"] < full["step_tflop_per_image"]
    assert all(row["mfu"] is None and row["peak_memory_bytes"] is None for row in steps.values())  # CPU: no peak
    references = {row["name"]: row for row in dry_runs[1]["bench_gpu_unet"]["references"]}
    assert references["S4 (reported)"]["s_per_step"] == 9.3
    assert references["kohya (reported)"]["s_per_step"] == pytest.approx(1 / 1.11)


def test_the_peer_benchmark_sets_our_step_beside_the_examples(dry_runs):
    rows = {row["name"]: row for row in dry_runs[1]["bench_gpu_peer"]["rows"]}
    assert rows["ours: trainer step (cached latents and text)"]["steps_per_s_vs_ours"] == 1.0
    assert {"peer: example step (encodes every step)", "peer: example step on cached inputs", "ours: train()"} < set(rows)
    assert "reproduction of diffusers" in dry_runs[1]["bench_gpu_peer"]["peer"]


def test_the_scaling_benchmark_varies_one_axis_at_a_time(dry_runs):
    payload = dry_runs[1]["bench_gpu_scaling"]
    for axis, values in payload["grid"].items():
        rows = [row for row in payload["rows"] if row["axis"] == axis]
        assert [row[axis] for row in rows] == values
    resolution = [row for row in payload["rows"] if row["axis"] == "resolution"]
    assert resolution[1]["step_tflop_per_image"] > 3.5 * resolution[0]["step_tflop_per_image"]  # 4x the pixels


def test_without_a_gpu_a_real_run_refuses_instead_of_measuring_the_cpu(bench, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="no CUDA device: the GPU benchmarks need one"):
        bench("bench_gpu_unet").main(["--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_sd15_model_flops_match_the_published_figures(bench):
    """One SD v1.5 UNet forward at 512 px is about 0.80 TFLOP per image, a LoRA step with the base
    frozen about 1.73 (no weight gradients for frozen weights); a full step three forwards."""
    gpu_bench = bench("gpu_bench")
    lora = gpu_bench.count_step_flops(gpu_bench.StepSetup("lora", rank=16, batch=1), dry_run=False)
    assert lora["forward_flops"] / 1e12 == pytest.approx(0.80, rel=0.02)
    assert lora["step_flops"] / 1e12 == pytest.approx(1.73, rel=0.02)


def test_a_plot_is_redrawn_from_its_json(dry_runs, bench, tmp_path):
    out, _ = dry_runs
    copy = tmp_path / "bench_gpu_scaling.json"
    copy.write_text((out / "bench_gpu_scaling.json").read_text())
    bench("gpu_bench").main(["plot", str(copy)])
    assert copy.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_the_appendix_says_no_gpu_or_shows_the_measured_results(dry_runs, tmp_path):
    from lora_core.experiments.appendix import NO_GPU, gpu_benchmarks

    out, payloads = dry_runs
    assert gpu_benchmarks(out) == ({}, [], NO_GPU)  # dry runs are not measurements
    measured = json.loads(json.dumps(payloads["bench_gpu_unet"]))
    measured.update(dry_run=False, device="NVIDIA H200", date_utc="2026-12-02T10:00:00Z")
    measured["steps"][0]["mfu"] = 0.42
    (tmp_path / "bench_gpu_unet.json").write_text(json.dumps(measured))
    (tmp_path / "bench_gpu_unet.png").write_bytes((out / "bench_gpu_unet.png").read_bytes())
    tables, images, sentence = gpu_benchmarks(tmp_path)
    assert list(tables) == ["bench_gpu_unet"] and images == [tmp_path / "bench_gpu_unet.png"]
    assert len(tables["bench_gpu_unet"]) == 3 + 2 and set(tables["bench_gpu_unet"]["device"]) == {"NVIDIA H200"}
    assert sentence == ("GPU benchmarks measured: bench_gpu_unet on NVIDIA H200 (2026-12-02); random weights. "
                        "A rank-16 LoRA step reached 42% of the card's peak (target 40%).")


def test_this_build_has_no_gpu_results_and_the_appendix_says_so():
    from lora_core.experiments.appendix import BENCHMARK_RESULTS, NO_GPU, gpu_benchmarks

    if any(BENCHMARK_RESULTS.glob("bench_gpu_*.json")):
        pytest.skip("GPU results are committed")
    assert gpu_benchmarks()[2] == NO_GPU


def test_the_carried_wheels_are_the_pins_and_their_needs_without_torchs_stack(bench):
    from lora_core.platforms import required_pins

    wheels = bench("download_gpu_wheels")
    wanted = wheels.closure()
    pins = {wheels._canonical(name): version for name, version in required_pins(ROOT / "requirements-gpu.txt").items()}
    for name in ("diffusers", "transformers", "huggingface-hub", "peft", "accelerate", "safetensors", "tokenizers"):
        assert wanted[name] == pins[name]
    assert not {"torch", "torchvision", "triton", "numpy", "pillow"} & set(wanted)
    assert not any(name.startswith("nvidia-") for name in wanted)
    assert {"hf-xet", "httpx2", "regex"} <= set(wanted)  # what the pinned hub and transformers need
