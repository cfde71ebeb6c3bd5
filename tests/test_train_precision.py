"""bf16 mixed precision on the CPU: the same run trains to the fp32 run's losses within a stated
tolerance, the LoRA weights and the exported adapter stay fp32, and the caller's base is untouched.
(The speed of bf16 is measured by benchmarks/bench_peer.py, not asserted here.)"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lora_core.train import TrainConfig, train

# bf16 keeps 8 bits of mantissa (relative rounding ~4e-3 per operation): after six steps of a
# random tiny UNet the per-step losses measured 2e-4-9e-4 apart relatively; 3% leaves room for
# other kernels without letting a wrong cast (loss ~1, or NaN) pass
LOSS_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision") / "images"
    folder.mkdir()
    for i, colour in enumerate([(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 20)]):
        pixels = np.full((32, 32, 3), 255, np.uint8)
        pixels[4 + i:20 + i, 6:26] = colour
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"emoji {i}")
    return folder


@pytest.mark.usefixtures("one_thread")
def test_bf16_trains_to_the_fp32_losses_and_exports_an_fp32_adapter(images, tiny_base, tmp_path):
    records = {}
    for precision, attention in (("no", "sdpa"), ("bf16", "eager")):
        config = TrainConfig.from_dict(dict(data={"folder": str(images)}, validation_folder=str(images),
                                            max_train_steps=6, batch_size=4, learning_rate=1e-2,
                                            validation_every_steps=3, options={"rank": 4, "alpha": 8.0},
                                            mixed_precision=precision, attention=attention))
        records[precision] = train(config, base=tiny_base, runs_root=tmp_path / precision, progress=False)
    losses = {p: np.array([r["loss"] for r in record.metrics()]) for p, record in records.items()}
    assert np.all(np.isfinite(losses["bf16"]))
    np.testing.assert_allclose(losses["bf16"], losses["no"], rtol=LOSS_TOLERANCE)
    val = [r["val_loss"] for r in records["bf16"].metrics() if "val_loss" in r]
    assert val[-1] < val[0]
    exported = {name: load_file(path) for name, path in records["bf16"].exports.items()
                if str(path).endswith(".safetensors")}
    assert exported and {t.dtype for tensors in exported.values() for t in tensors.values()} == {torch.float32}
    assert records["bf16"].summary["mixed_precision"] == "bf16"
    assert next(tiny_base.unet.parameters()).dtype == torch.float32  # the caller's base is not cast
