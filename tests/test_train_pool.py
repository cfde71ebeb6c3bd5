"""Runs and jobs side by side in child processes (:mod:`lora_core.train_pool`): the same runs,
images and cached results as in this process, a failing run named, and nothing leaves the
process where a GPU trains."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lora_core import train as train_module
from lora_core.data import DatasetError
from lora_core.train import TrainConfig, train
from lora_core.train_pool import train_many


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Four captioned swatches: with batch size 4 every step trains on all of them."""
    folder = tmp_path_factory.mktemp("swatches")
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(folder / f"s{i}.png")
        (folder / f"s{i}.txt").write_text(f"swatch {i}")
    return folder


def _pool_config(folder, seed: int) -> TrainConfig:
    return TrainConfig.from_dict({"data": {"folder": str(folder)}, "max_train_steps": 3, "batch_size": 4,
                                  "learning_rate": 1e-2, "options": {"rank": 4, "alpha": 8.0}, "seed": seed})


def _losses(record) -> list[float]:
    return [row["loss"] for row in record.metrics()]


def test_runs_trained_in_two_children_equal_the_runs_trained_here(data_dir, tmp_path, one_thread):
    configs = {"a": _pool_config(data_dir, 1), "b": _pool_config(data_dir, 2), "a again": _pool_config(data_dir, 1)}
    side_by_side = train_many(configs, runs_root=tmp_path / "children", processes=2)
    here = {key: train(config, runs_root=tmp_path / "here", progress=False) for key, config in configs.items()}
    assert len(list((tmp_path / "children").glob("lora-*"))) == 2   # "a again" is "a": trained once
    assert side_by_side["a"].run_dir == side_by_side["a again"].run_dir
    for key in configs:
        assert _losses(side_by_side[key]) == _losses(here[key])
        ours, theirs = (load_file(record.exports["diffusers"]) for record in (side_by_side[key], here[key]))
        assert ours.keys() == theirs.keys() and all((ours[name] == theirs[name]).all() for name in ours)
    assert _losses(side_by_side["a"]) != _losses(side_by_side["b"])


def test_a_failing_run_in_a_child_is_raised_with_its_folder(data_dir, tmp_path):
    missing = tmp_path / "no-such-folder"
    configs = {"good": _pool_config(data_dir, 1), "bad": _pool_config(missing, 1)}
    with pytest.raises(DatasetError, match=f"^{missing}: dataset folder does not exist$"):
        train_many(configs, runs_root=tmp_path / "runs", processes=2)
    assert not list((tmp_path / "runs").glob(f"lora-{configs['bad'].hash()}/summary.json"))


def test_jobs_mapped_to_children_equal_the_jobs_done_here_and_what_they_cache_is_read_back(
        data_dir, tiny_base, tmp_path, monkeypatch, one_thread):
    from lora_core.experiments import common
    from lora_core.profiles import get_profile
    from lora_core.train_pool import independent, map_side_by_side, trained

    profile = get_profile("smoke")
    calls = [(["a cat emoji"], [1]), (["a dog emoji", "a red apple emoji"], [2, 3]), (["a cat emoji"], [4])]

    def jobs(where: str) -> list:
        return [(trained, (_pool_config(data_dir, 1), tmp_path / where))] + [
            (common.generate_eval_images, (*call, profile, None, None, tmp_path / where)) for call in calls] + [
            independent(json.loads, ('{"without": "the base"}',))]

    record, *there, plain = map_side_by_side(jobs("children"), shared=(tiny_base,), processes=2)
    *here, plain_here = map_side_by_side(jobs("here"), shared=(tiny_base,), processes=1)
    assert plain == plain_here == {"without": "the base"}
    assert _losses(record) == _losses(here[0]) and record.run_dir.parent == tmp_path / "children"
    assert [tuple(images.shape) for images in there] == [(n, 3, 32, 32) for n in (1, 2, 1)]
    assert all(torch.equal(a, b) for a, b in zip(there, here[1:])) and not torch.equal(there[0], there[2])
    monkeypatch.setattr("lora_core.generate.generate_cells", lambda *args, **kwargs: pytest.fail("generated again"))
    again = [common.generate_eval_images(tiny_base, *call, profile, cache_dir=tmp_path / "children") for call in calls]
    assert all(torch.equal(a, b) for a, b in zip(again, here[1:]))
    assert trained(tiny_base, None) is None


def test_where_a_gpu_trains_runs_train_one_at_a_time_here(data_dir, tiny_base, tmp_path, monkeypatch):
    from lora_core import train_pool

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train_pool.ChildHelpers, "start", lambda self: pytest.fail("started child processes"))
    monkeypatch.setenv("LORA_CORE_TRAIN_PROCESSES", "2")
    configs = {seed: _pool_config(data_dir, seed) for seed in (1, 2)}
    monkeypatch.setattr(train_module, "train", lambda config, **kwargs: config.seed)  # no CUDA here to train on
    assert train_many(configs, base=tiny_base, runs_root=tmp_path) == {1: 1, 2: 2}
