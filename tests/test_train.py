"""The training loop on the tiny random model: every method's loss falls, records, reuse (and
retraining when the images or base weights changed), exact resume after SIGKILL, NaN stop, every
bad input refused before training starts (runs trained side by side: test_train_pool.py)."""
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from lora_core import runs, train as train_module
from lora_core.adapters.lycoris import ALGOS
from lora_core.models import base_fingerprint
from lora_core.train import TrainConfig, TrainingDiverged, train
from lora_core.runs import STATE_FILE, load_run

REPO = Path(__file__).resolve().parent.parent
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}
# Every method beyond UNet-only LoRA (test_lora_loss_falls_on_a_fixed_dataset), with a learning rate that
# moves it within six steps on the random model. LyCORIS on the transformer blocks only (preset
# attn-mlp): LoHa/LoKr on every 3x3 conv make a CPU step 5-15x slower.
METHOD_RUNS = {
    "textual_inversion": {"method": "textual_inversion", "options": {}, "learning_rate": 5e-2},
    "dreambooth": {"method": "dreambooth", "options": {}, "learning_rate": 1e-3},
    "lora_text_encoder": {"options": {"rank": 4, "alpha": 8.0, "train_text_encoder": True}},
    **{f"lycoris_{algo}": {"method": "lycoris", "options": {"algo": algo, "preset": "attn-mlp"},
                           "learning_rate": 5e-2 if algo == "ia3" else 1e-2} for algo in ALGOS},
}


def _write_images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        name = list(COLOURS)[i % 4]
        pixels = np.full((32, 32, 3), 255, np.uint8)
        pixels[4 + i % 8:20 + i % 8, 6:26] = COLOURS[name]
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"a {name} emoji")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("train") / "images", 8)


def _config(data_dir, **changes):
    values = dict(data={"folder": str(data_dir)}, validation_folder=str(data_dir), max_train_steps=6,
                  batch_size=4, learning_rate=1e-2, checkpoint_every_steps=2, validation_every_steps=3,
                  options={"rank": 4, "alpha": 8.0})
    return TrainConfig.from_dict({**values, **changes})


@pytest.fixture(scope="module")
def one_batch_dir(tmp_path_factory):
    """Four images: with batch size 4 every step trains on all of them."""
    return _write_images(tmp_path_factory.mktemp("one-batch") / "images", 4)


@pytest.fixture(scope="module")
def finished(data_dir, tiny_base, tmp_path_factory, one_thread):
    """One uninterrupted 6-step LoRA run, shared by the record, reuse and resume tests. Those compare
    losses and weights exactly, which holds only at one thread count: ``one_thread`` stays on for the
    rest of the module, whichever tests are selected (else a run made at two threads would be
    compared with one made at one, after another test switched)."""
    root = tmp_path_factory.mktemp("runs")
    return _config(data_dir), root, train(_config(data_dir), base=tiny_base, runs_root=root, progress=False)


def test_lora_loss_falls_on_a_fixed_dataset(data_dir, tiny_base, tmp_path):
    config = _config(data_dir, max_train_steps=24, checkpoint_every_steps=0, validation_every_steps=12,
                     learning_rate=3e-2)
    record = train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    rows = record.metrics()
    first, last = np.mean([r["loss"] for r in rows[:6]]), np.mean([r["loss"] for r in rows[-6:]])
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert last < first
    assert val[-1] < val[0]  # the deterministic validation loss on the training images falls too


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", sorted(METHOD_RUNS))
def test_each_method_trains_through_the_loop_and_its_validation_loss_falls(name, one_batch_dir, tiny_base, tmp_path):
    """Asserted on the deterministic validation loss (fixed noise and timesteps, here on the
    training images), not on the training loss: for textual inversion and (IA)^3 on a random UNet
    the step-to-step spread of random timesteps is larger than what six steps gain."""
    config = _config(one_batch_dir, max_train_steps=6, checkpoint_every_steps=0, validation_every_steps=2,
                     **METHOD_RUNS[name])
    record = train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    val = [r["val_loss"] for r in record.metrics() if "val_loss" in r]
    assert len(val) == 3 and val[0] > val[1] > val[2], val
    assert record.summary["method"] == config.method and record.summary["steps"] == 6
    assert record.exports and all(Path(path).exists() for path in record.exports.values())


def test_records_hold_config_metrics_summary_and_provenance(finished, tiny_base):
    config, root, record = finished
    run_dir = root / f"lora-{config.hash()}"
    assert record.run_dir == run_dir and record.finished
    assert json.loads((run_dir / "config.json").read_text()) == json.loads(config.to_json())
    rows = record.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "lr/unet", "s_per_it", "epoch"} <= set(r) for r in rows)
    assert [r["lr"] for r in rows] == [1e-2] * 6 and [r["epoch"] for r in rows] == [0, 1, 1, 2, 2, 3]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    summary = record.summary
    for key in ("wall_time_s", "steps_per_s", "peak_memory_bytes", "trainable_params", "file_sizes", "versions",
                "device", "seed", "final_loss", "final_val_loss", "data_fingerprint", "validation_fingerprint"):
        assert key in summary, key
    assert summary["base_fingerprint"] == base_fingerprint(tiny_base)
    lora_params = sum(t.numel() for t in load_file(record.exports["diffusers"]).values())
    assert summary["trainable_params"] == lora_params
    assert summary["adapter"]["rank"] == 4 and summary["adapter"]["alpha"] == 8.0 and summary["adapter"]["scale"] == 2.0
    assert summary["file_sizes"]["kohya"] == record.exports["kohya"].stat().st_size
    for path in (*record.exports.values(), *sorted((run_dir / "checkpoints").glob("*/*.safetensors"))):
        with safe_open(path, "pt") as f:
            metadata = f.metadata()
        assert metadata["lsl_config_hash"] == config.hash() and metadata["lsl_rank"] == "4"
        assert metadata["ss_network_alpha"] == "8.0" and metadata["lsl_scale"] == "2.0"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert not (run_dir / STATE_FILE).exists()  # the full state goes once the run is finished
    assert load_run(run_dir).summary == summary


def test_a_finished_run_is_reused_unless_forced(finished, tiny_base):
    config, root, record = finished
    metrics_file = record.run_dir / "metrics.jsonl"
    before = metrics_file.stat().st_mtime_ns
    again = train(config, base=tiny_base, runs_root=root, progress=False)
    assert again.summary == record.summary and metrics_file.stat().st_mtime_ns == before
    forced = train(config, base=tiny_base, runs_root=root, force=True, progress=False)
    assert metrics_file.stat().st_mtime_ns != before
    assert [r["loss"] for r in forced.metrics()] == [r["loss"] for r in record.metrics()]  # same seed, same run


@pytest.mark.usefixtures("one_thread")
def test_a_finished_run_is_retrained_when_its_images_or_base_weights_changed(tiny_base, tmp_path, capsys):
    """The config hash covers the config only; the summary's fingerprints cover what it points to."""
    images = _write_images(tmp_path / "images", 4)
    config = _config(images, validation_folder="", max_train_steps=1, checkpoint_every_steps=0)
    first = train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    capsys.readouterr()

    def train_again(base):
        record = train(config, base=base, runs_root=tmp_path, progress=False)
        return record, [line for line in capsys.readouterr().err.splitlines() if "retraining" in line]

    reused, said = train_again(tiny_base)
    assert reused.summary == first.summary and said == []

    other_weights = copy.deepcopy(tiny_base)  # the same source string, "tiny-random"
    with torch.no_grad():
        other_weights.unet.conv_in.bias.add_(1e-3)
    retrained, said = train_again(other_weights)
    assert said == [f"{first.run_dir}: retraining this finished run: base model weights changed "
                    f"({first.summary['base_fingerprint'][:12]} -> {base_fingerprint(other_weights)[:12]})"]
    assert retrained.summary["base_fingerprint"] == base_fingerprint(other_weights)

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "img01.png")
    retrained, said = train_again(other_weights)
    assert len(said) == 1 and said[0].endswith(": retraining this finished run: training images or captions "
                                               f"changed ({first.summary['data_fingerprint']} -> "
                                               f"{retrained.summary['data_fingerprint']})")
    assert retrained.summary["data_fingerprint"] != first.summary["data_fingerprint"]

    summary_file = retrained.run_dir / "summary.json"
    summary_file.write_text(json.dumps({k: v for k, v in retrained.summary.items() if k != "base_fingerprint"}))
    retrained, said = train_again(other_weights)
    assert said == [f"{first.run_dir}: retraining this finished run: base model weights unknown "
                    "(summary.json has no base_fingerprint: an older run)"]
    assert train_again(other_weights) == (retrained, [])


@pytest.mark.parametrize("key, message", [("data_fingerprint", "training images or captions changed"),
                                          ("validation_fingerprint", "validation images or captions changed"),
                                          ("base_fingerprint", "base model weights changed")])
def test_a_resume_state_on_other_images_or_base_weights_is_refused(finished, tiny_base, tmp_path, key, message):
    config, _, record = finished
    state_file = tmp_path / "training_state.pt"
    inputs = {k: record.summary[k] for k in ("data_fingerprint", "validation_fingerprint", "base_fingerprint")}
    torch.save({"config_hash": config.hash(), "config": config.to_dict(), "step": 2, **inputs, key: "0" * 12},
               state_file)
    with pytest.raises(ValueError, match=f"training_state.pt: the {message} since this state was written"):
        train(config, base=tiny_base, runs_root=tmp_path, resume_from=state_file, progress=False)


def test_resume_after_sigkill_is_bit_identical(finished, data_dir, tmp_path):
    config, _, uninterrupted = finished
    config_file = tmp_path / "run.json"
    config_file.write_text(config.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lora_core.train", "--config", str(config_file),
                                "--runs-root", str(tmp_path / "runs"), "--no-progress"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = tmp_path / "runs" / f"lora-{config.hash()}" / STATE_FILE
    deadline = time.monotonic() + 600
    while not state_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state_file.exists(), process.stderr.read().decode()[-2000:]
    run_dir = state_file.parent.parent
    assert not (run_dir / "summary.json").exists()  # killed mid-way
    killed_at = torch.load(state_file, weights_only=True)["step"]
    assert 2 <= killed_at < 6

    resumed = train(config, runs_root=tmp_path / "runs", progress=False)
    assert resumed.summary["resumed_from_step"] == killed_at
    assert [r["loss"] for r in resumed.metrics()] == [r["loss"] for r in uninterrupted.metrics()]
    assert [r.get("val_loss") for r in resumed.metrics()] == [r.get("val_loss") for r in uninterrupted.metrics()]
    for layout in ("diffusers", "kohya"):
        expected, got = load_file(uninterrupted.exports[layout]), load_file(resumed.exports[layout])
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), layout


# Runs on every process of a distributed run: records a hash of the trained embedding after each step.
DISTRIBUTED_WORKER = """
import hashlib, os, sys
from lora_core.adapters import get_adapter
from lora_core.train import TrainConfig, train

config, out = TrainConfig.from_json(sys.argv[1]), sys.argv[2]
adapter_class = get_adapter(config.method)
after_step = adapter_class.after_optimizer_step

def record_trained_embedding(self, base):
    after_step(self, base)
    weight = self.embedding(base).weight.detach().cpu().numpy()
    with open(os.path.join(out, "rank" + os.environ["RANK"] + ".txt"), "a") as f:
        f.write(hashlib.sha256(weight.tobytes()).hexdigest() + "\\n")

adapter_class.after_optimizer_step = record_trained_embedding
train(config, runs_root=out, progress=False)
"""


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo")
def test_two_processes_asked_for_one_run_at_once_train_it_once(finished, tmp_path):
    """Chapters executed side by side may ask for the same run: one trains it, the other waits for
    the run's lock and reuses the result, so the run folder holds one whole run."""
    config, _, uninterrupted = finished
    config_file = config.save_json(tmp_path / "run.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "lora_core.train", "--config", str(config_file), "--runs-root",
               str(tmp_path / "runs"), "--no-progress"]
    processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(2)]
    errors = [process.communicate(timeout=600)[1].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    record = load_run(tmp_path / "runs" / f"lora-{config.hash()}")
    assert [r["loss"] for r in record.metrics()] == [r["loss"] for r in uninterrupted.metrics()]  # 6 rows, not 12
    assert record.summary["resumed_from_step"] == 0  # trained from the start by one process


def test_the_run_lock_excludes_another_process_while_held(tmp_path):
    run_dir = tmp_path / "runs" / "lora-0123456789ab"
    probe = ("import fcntl, sys\n"
             "with open(sys.argv[1], 'a') as f:\n"
             "    try:\n        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    except BlockingIOError:\n"
             "        sys.exit(3)\n")
    with runs.run_lock(run_dir) as lock_file:
        assert lock_file == tmp_path / "runs" / ".locks" / "lora-0123456789ab.lock"
        assert subprocess.run([sys.executable, "-c", probe, str(lock_file)]).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, str(lock_file)]).returncode == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORLD_SIZE", "2")  # a distributed launch trains one run in every process
        with runs.run_lock(run_dir) as lock_file:
            assert lock_file is None


def test_two_processes_keep_a_trained_text_encoder_in_sync(data_dir, tmp_path):
    """Textual inversion on two CPU processes (DDP over gloo): each trains on its own images, the
    text encoder's gradients are averaged, so both hold the same embedding after every step. The
    UNet, without trainable parameters here, stays outside DDP (which refuses such a module)."""
    config = _config(data_dir, validation_folder="", max_train_steps=2, batch_size=2, checkpoint_every_steps=0,
                     method="textual_inversion", options={}, learning_rate=5e-2)
    config_file, worker = config.save_json(tmp_path / "run.json"), tmp_path / "worker.py"
    worker.write_text(DISTRIBUTED_WORKER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(config_file), str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = [(tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert per_rank[0] == per_rank[1] and len(set(per_rank[0])) == 2  # identical, and changed every step
    assert load_run(tmp_path / f"textual_inversion-{config.hash()}").summary["steps"] == 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(data_dir, tiny_base, tmp_path, monkeypatch):
    real_loss, calls = train_module.diffusion_loss, []

    def nan_on_third_step(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_module, "diffusion_loss", nan_on_third_step)
    config = _config(data_dir, checkpoint_every_steps=1, validation_every_steps=0)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3 .*last good state is .*training_state.pt"):
        train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    state = torch.load(tmp_path / f"lora-{config.hash()}" / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["adapter"].values())


# -- bad input: one clear error, before any training ------------------------------------------------


def test_unknown_keys_list_the_valid_ones(data_dir):
    with pytest.raises(ValueError, match=r"TrainConfig: unknown key 'lerning_rate'. Valid keys: method, options"):
        TrainConfig.from_dict({"data": {"folder": str(data_dir)}, "lerning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"LoraOptions: unknown key 'rnak'. Valid keys: rank, alpha"):
        TrainConfig.from_dict({"data": {"folder": str(data_dir)}, "options": {"rnak": 8}})
    with pytest.raises(ValueError, match="unknown training method 'loar'"):
        TrainConfig.from_dict({"data": {"folder": str(data_dir)}, "method": "loar"})


@pytest.mark.parametrize("changes, message", [
    ({"options": {"rank": 0}}, "rank must be a positive integer, got 0"),
    ({"options": {"rank": 4, "alpha": -1.0}}, "alpha must be positive"),
    ({"learning_rate": -1e-4}, "learning_rate must be positive"),
    ({"max_train_steps": 0}, "max_train_steps must be positive"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"lr_scheduler": "cosine_restart"}, "lr_scheduler='cosine_restart' is not one of constant, linear"),
    ({"num_class_images": 4}, "prior preservation needs both class_prompt and num_class_images > 0"),
    ({"class_prompt": "an emoji"}, "prior preservation needs both class_prompt and num_class_images > 0"),
    ({"class_prompt": "an emoji", "num_class_images": 2, "prior_loss_weight": -1.0}, "prior_loss_weight must be >= 0"),
])
def test_bad_values_are_refused_when_the_config_is_built(data_dir, changes, message):
    with pytest.raises(ValueError, match=message):
        _config(data_dir, **changes)


def test_targets_matching_nothing_list_close_names(data_dir, tiny_base, tmp_path):
    config = _config(data_dir, options={"target_modules": ["to_q", "to_kk"]})
    with pytest.raises(ValueError, match=r"'to_kk' matches nothing in the UNet. Close module names: to_k"):
        train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    assert not (tmp_path / f"lora-{config.hash()}").exists()


def test_a_dataset_smaller_than_one_batch_is_refused(data_dir, tiny_base, tmp_path):
    small = _write_images(tmp_path / "small", 3)
    config = _config(small, validation_folder="")
    with pytest.raises(ValueError, match=r"has 3 training images .* one batch needs 4"):
        train(config, base=tiny_base, runs_root=tmp_path, progress=False)


def test_a_resume_state_from_another_config_is_refused(finished, data_dir, tiny_base, tmp_path):
    config, _, _ = finished
    other = _config(data_dir, seed=1)
    state_file = tmp_path / "training_state.pt"
    torch.save({"config_hash": other.hash(), "config": other.to_dict(), "step": 2}, state_file)
    with pytest.raises(ValueError, match=r"written by config .*, not by this config .*; differing keys: seed"):
        train(config, base=tiny_base, runs_root=tmp_path, resume_from=state_file, progress=False)


def test_prior_preservation_adds_the_weighted_loss_on_the_base_models_class_images(data_dir, tiny_base, tmp_path):
    """The class term is computed after the instance term with the same RNG stream, so the first
    step's instance loss is identical across weights and the logged loss is linear in the weight."""
    from lora_core.adapters.dreambooth import generate_class_images

    prior = dict(class_prompt="an emoji", num_class_images=2, class_image_steps=1, max_train_steps=1,
                 checkpoint_every_steps=0, validation_every_steps=0)
    records = {w: train(_config(data_dir, prior_loss_weight=w, **prior), base=tiny_base, runs_root=tmp_path,
                        progress=False) for w in (0.0, 1.0, 2.0)}
    first = {w: record.metrics()[0]["loss"] for w, record in records.items()}
    assert first[1.0] > first[0.0]
    assert first[2.0] - first[0.0] == pytest.approx(2 * (first[1.0] - first[0.0]), rel=1e-5)
    expected = generate_class_images(tiny_base, "an emoji", 2, tmp_path / "reference", seed=0, steps=1,
                                     resolution=32)
    produced = sorted((records[1.0].run_dir / "class_images").glob("class_*.png"))
    assert [p.read_bytes() for p in produced] == [p.read_bytes() for p in expected]


# -- accumulation under DDP, skipped fp16 steps, validation -----------------------------------------

# Prepended to DISTRIBUTED_WORKER: counts, per process, DDP's gradient all-reduces (one comm-hook
# call per gradient bucket in every backward that syncs).
COUNT_ALL_REDUCES = """
import os, sys
import torch
from accelerate import Accelerator
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

prepare = Accelerator.prepare

def count_then_all_reduce(process_group, bucket):
    with open(os.path.join(sys.argv[2], "allreduces" + os.environ["RANK"] + ".txt"), "a") as f:
        f.write("1\\n")
    return allreduce_hook(process_group, bucket)

def prepare_and_count(self, *args, **kwargs):
    prepared = prepare(self, *args, **kwargs)
    if isinstance(prepared, torch.nn.parallel.DistributedDataParallel):
        prepared.register_comm_hook(None, count_then_all_reduce)
    return prepared

Accelerator.prepare = prepare_and_count
"""


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo")
def test_gradient_accumulation_under_ddp_all_reduces_once_per_optimizer_step(data_dir, tmp_path):
    """Two CPU processes, textual inversion (one trained tensor: one gradient bucket), two steps of
    two micro-batches: the micro-batches before the last accumulate locally (no_sync), so each
    process all-reduces twice, not four times, and both still hold the same embedding after
    every step."""
    config = _config(data_dir, validation_folder="", max_train_steps=2, batch_size=1, gradient_accumulation_steps=2,
                     checkpoint_every_steps=0, method="textual_inversion", options={}, learning_rate=5e-2)
    config_file, worker = config.save_json(tmp_path / "run.json"), tmp_path / "worker.py"
    worker.write_text(COUNT_ALL_REDUCES + DISTRIBUTED_WORKER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}  # the worker imports this checkout, whichever one pip installed
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(config_file), str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [len((tmp_path / f"allreduces{rank}.txt").read_text().split()) for rank in (0, 1)] == [2, 2]
    per_rank = [(tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert per_rank[0] == per_rank[1] and len(set(per_rank[0])) == 2


class _InfiniteGradient(torch.autograd.Function):
    """The identity forward; backward returns infinite gradients (fp16 overflow, forced)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_the_lr_schedule_does_not_advance_when_the_grad_scaler_skips_a_step(one_batch_dir, tiny_base, tmp_path,
                                                                           monkeypatch):
    """accelerate makes fp16's GradScaler only on accelerators, so the test gives the CPU one
    torch's CPU GradScaler (scale 1: the losses are unchanged) and an infinite gradient at step 2.
    The scaler skips that update; the linear schedule must wait with it."""
    from accelerate import Accelerator

    accelerator_init, real_loss, calls = Accelerator.__init__, train_module.diffusion_loss, []

    def init_with_grad_scaler(self, *args, **kwargs):
        accelerator_init(self, *args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)

    def infinite_gradient_on_second_step(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return _InfiniteGradient.apply(loss) if len(calls) == 2 else loss

    monkeypatch.setattr(Accelerator, "__init__", init_with_grad_scaler)
    monkeypatch.setattr(train_module, "diffusion_loss", infinite_gradient_on_second_step)
    config = _config(one_batch_dir, validation_folder="", max_train_steps=4, checkpoint_every_steps=0,
                     lr_scheduler="linear", max_grad_norm=0.0)
    rows = train(config, base=tiny_base, runs_root=tmp_path, progress=False).metrics()
    assert [r["lr"] for r in rows] == pytest.approx([1e-2, 7.5e-3, 7.5e-3, 5e-3])
    assert [r.get("optimizer_step_skipped", False) for r in rows] == [False, True, False, False]


def test_a_validation_fraction_that_holds_out_no_image_is_refused(tiny_base, tmp_path):
    """One image: the split keeps it for training and holds out none. Asked for a validation loss,
    the run refuses at set-up (it used to crash at its last step)."""
    one = _write_images(tmp_path / "one", 1)
    config = _config(one, validation_folder="", data={"folder": str(one), "validation_fraction": 0.5},
                     batch_size=1, max_train_steps=2, checkpoint_every_steps=0)
    message = f"dataset {one} has 1 image(s): validation_fraction=0.5 holds none out"
    with pytest.raises(ValueError, match=re.escape(message)):
        train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    assert not (tmp_path / f"lora-{config.hash()}").exists()


def test_the_validation_loss_does_not_depend_on_caching_the_training_latents(data_dir, tiny_base, tmp_path,
                                                                            monkeypatch):
    """Validation latents come from their own generator: the same with and without cache_latents,
    so the same weights give the same val_loss (here: the first call, before any step changes
    them, is made on the untrained base; the spy evaluates every run's latents on it)."""
    real_validation_loss, seen = train_module.validation_loss, []
    monkeypatch.setattr(train_module, "validation_loss",
                        lambda base, latents, embeddings, config: seen.append((latents, embeddings)) or 0.0)
    for cache_latents in (True, False):
        train(_config(data_dir, max_train_steps=1, checkpoint_every_steps=0, cache_latents=cache_latents),
              base=tiny_base, runs_root=tmp_path, progress=False)
    (cached, cached_text), (uncached, uncached_text) = seen
    assert torch.equal(cached, uncached) and torch.equal(cached_text, uncached_text)
    config = _config(data_dir)
    assert (real_validation_loss(tiny_base, cached, cached_text, config)
            == real_validation_loss(tiny_base, uncached, uncached_text, config))


# -- a kill at any write leaves nothing that survives a resume --------------------------------------

# Trains the config in argv[1] under the runs root argv[2] and SIGKILLs itself at the point argv[3]:
# "state" just after the step-4 state is written to its temporary file, before the rename;
# "checkpoint" between the two files of checkpoint step-000004; "exports" between the two files
# of the final export.
KILL_WORKER = """
import os, signal, sys
from pathlib import Path
import torch
import lora_core.formats
from lora_core.train import TrainConfig, train

config, runs_root, point = TrainConfig.from_json(sys.argv[1]), sys.argv[2], sys.argv[3]
save, save_kohya = torch.save, lora_core.formats.save_lora_kohya

def save_then_die(obj, path, *args, **kwargs):
    save(obj, path, *args, **kwargs)
    if point == "state" and isinstance(obj, dict) and obj.get("step") == 4:
        os.kill(os.getpid(), signal.SIGKILL)

def die_before_the_kohya_file(path, *args, **kwargs):
    folder = Path(path).parent.name
    if (point == "checkpoint" and "step-000004" in folder) or (point == "exports" and "exports" in folder):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_kohya(path, *args, **kwargs)

torch.save, lora_core.formats.save_lora_kohya = save_then_die, die_before_the_kohya_file
train(config, runs_root=runs_root, progress=False)
"""


def _tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {path.name: load_file(path) for path in sorted(folder.glob("*.safetensors"))}


def _same_files(expected: Path, got: Path) -> bool:
    want, have = _tensors(expected), _tensors(got)
    return want.keys() == have.keys() and all(
        want[name].keys() == have[name].keys() and all(torch.equal(want[name][k], have[name][k]) for k in want[name])
        for name in want)


@pytest.mark.parametrize("point", ["state", "checkpoint", "exports"])
def test_a_kill_while_writing_then_resume_ends_bit_identical_with_no_debris(finished, tiny_base, tmp_path, point):
    config, _, uninterrupted = finished
    config_file, worker = config.save_json(tmp_path / "run.json"), tmp_path / "worker.py"
    worker.write_text(KILL_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}  # the worker imports this checkout, whichever one pip installed
    killed = subprocess.run([sys.executable, str(worker), str(config_file), str(tmp_path / "runs"), point], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "runs" / f"lora-{config.hash()}"
    assert not (run_dir / "summary.json").exists()

    resumed = train(config, base=tiny_base, runs_root=tmp_path / "runs", progress=False)
    assert resumed.summary["resumed_from_step"] == {"state": 2, "checkpoint": 2, "exports": 4}[point]
    assert [r["loss"] for r in resumed.metrics()] == [r["loss"] for r in uninterrupted.metrics()]
    assert [r.get("val_loss") for r in resumed.metrics()] == [r.get("val_loss") for r in uninterrupted.metrics()]
    assert _same_files(uninterrupted.run_dir / "exports", run_dir / "exports")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000004"]
    for name in checkpoints:
        assert _same_files(uninterrupted.run_dir / "checkpoints" / name, run_dir / "checkpoints" / name), name
    debris = [p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name.startswith(".") or "tmp" in p.name]
    assert debris == [] and not (run_dir / "state").exists()


def test_a_finished_run_missing_an_exported_file_is_neither_loaded_nor_reused(one_batch_dir, tiny_base, tmp_path,
                                                                           capsys):
    config = _config(one_batch_dir, validation_folder="", max_train_steps=1, checkpoint_every_steps=0)
    record = train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    kohya = record.exports["kohya"]
    expected = load_file(kohya)
    kohya.unlink()
    relative = kohya.relative_to(record.run_dir)
    with pytest.raises(FileNotFoundError, match=f"not a finished run: exported file {relative} is missing"):
        load_run(record.run_dir)
    assert not record.finished
    capsys.readouterr()
    again = train(config, base=tiny_base, runs_root=tmp_path, progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f"{record.run_dir}: retraining this finished run: exported file {relative} is missing"]
    got = load_file(again.exports["kohya"])
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


# -- relative folders -------------------------------------------------------------------------------


def test_relative_folders_are_under_the_project_root_whatever_the_working_directory(tiny_base, tmp_path,
                                                                                     monkeypatch):
    """The config keeps the folders as written (so its hash does not depend on the checkout);
    train() reads the images and writes the run under the project root (here a stand-in root),
    not under the working directory."""
    from lora_core import paths

    root, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    _write_images(root / "images", 4)
    elsewhere.mkdir()
    monkeypatch.setattr(paths, "REPO_ROOT", root)
    monkeypatch.chdir(elsewhere)
    config = _config("images", validation_folder="images", max_train_steps=1, checkpoint_every_steps=0)
    record = train(config, base=tiny_base, runs_root="runs", progress=False)
    assert record.run_dir == root / "runs" / f"lora-{config.hash()}" and record.finished
    assert record.config["data"]["folder"] == "images" and record.config["validation_folder"] == "images"
    assert record.summary["train_images"] == 4 and record.summary["validation_images"] == 4
    assert list(elsewhere.iterdir()) == []
