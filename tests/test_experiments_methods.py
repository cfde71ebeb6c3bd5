"""Chapter 3's logic: same settings for every method, costs from run records, S1's ranking beside ours."""
import pandas as pd
import pytest

from lora_core.experiments import methods
from lora_core.profiles import get_profile
from lora_core.runs import RunRecord

SMOKE = get_profile("smoke")


def test_every_method_shares_data_steps_batch_and_seeds():
    configs = methods.methods_configs(SMOKE, "openmoji", seeds=[0, 1])
    assert len(configs) == len(methods.METHODS) * 2
    shared = {(c.data, c.max_train_steps, c.batch_size, c.base_model) for c in configs.values()}
    assert len(shared) == 1
    assert {c.method for c in configs.values()} == {"lora", "textual_inversion", "dreambooth", "lycoris"}
    assert len({c.hash() for c in configs.values()}) == len(configs)


def _record(tmp_path, name, params, wall, export_files):
    folder = tmp_path / name
    for rel, size in export_files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x" * size)
    summary = {"config_hash": name, "trainable_params": params, "steps": 10, "wall_time_s": wall,
               "peak_memory_bytes": 2**20, "peak_memory_kind": "process_rss", "final_loss": 0.1}
    export = next(iter(export_files)).split("/")[0]
    return RunRecord(folder, summary, {"diffusers": folder / export})


def test_costs_count_folder_exports_and_average_over_seeds(tmp_path):
    records = {("lora", 0): _record(tmp_path, "l0", 100, 2.0, {"lora.safetensors": 1000}),
               ("lora", 1): _record(tmp_path, "l1", 100, 4.0, {"lora.safetensors": 1000}),
               ("dreambooth", 0): _record(tmp_path, "d0", 5000, 8.0, {"model/unet/w.safetensors": 3000,
                                                                      "model/vae/w.safetensors": 2000})}
    costs = methods.cost_table(records)
    assert costs.set_index(["method", "seed"]).loc[("dreambooth", 0), "export_mb"] == pytest.approx(5000 / 2**20)
    assert list(costs.s_per_step) == pytest.approx([0.2, 0.4, 0.8])
    summary = methods.cost_summary(costs)
    assert summary.loc["lora", "wall_time_s"] == pytest.approx(3.0) and summary.loc["lora", "trainable_params"] == 100


def test_s1_methods_table_ranks_by_each_metrics_direction():
    aggregated = pd.DataFrame([{"eval_set": "training captions", "method": m, "measure": "fd_effnet", "value": v}
                               for m, v in (("base", 9.0), ("lora", 1.0), ("textual_inversion", 3.0),
                                            ("dreambooth", 2.0))])
    table = methods.s1_methods_table(aggregated)
    fid = table[table["S1 metric"] == "FID"].set_index("method")
    assert list(fid["S1 rank"]) == [1.0, 2.0, 3.0]              # S1: LoRA 180.49 < TI 200.95 < DB 224.43
    assert list(fid["our rank (of all methods)"]) == [1.0, 3.0, 2.0]
    assert fid.loc["textual_inversion", "S1 value"] == pytest.approx(200.95)
    clip = table[table["S1 metric"] == "CLIP"].set_index("method")
    assert clip.loc["lora", "S1 rank"] == 1.0 and clip["our value"].isna().all()
    lpips = table[table["S1 metric"] == "LPIPS"].set_index("method")   # diversity: higher ranks first
    assert list(lpips["S1 rank"]) == [3.0, 1.0, 2.0]                  # 0.667, 0.777, 0.691
