"""Chapter 3's logic: same settings for every method, costs from run records, S1's ranking beside ours."""
import pandas as pd
import pytest
import torch

from lora_core.experiments import methods
from lora_core.experiments.common import eval_set
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


def _held_out(values):
    """Aggregated P(target style) rows on held-out captions, ``{method: value}``, intervals +-0.1."""
    return pd.DataFrame([{"eval_set": "held-out captions", "method": m, "measure": "p_target_style", "metric": "P",
                          "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1} for m, v in values.items()])


def test_the_method_most_in_style_is_the_highest_p_style_and_never_the_base():
    best, base = methods.most_in_style(_held_out({"base": 0.9, "lora": 0.4, "dreambooth": 0.6, "loha": 0.6}))
    assert (best.method, base.method) == ("dreambooth", "base")   # ties keep the table's order
    facts = methods.style_facts(_held_out({"base": 0.2, "lora": 0.55}), "openmoji")
    assert (facts["best_method"], facts["best_value"], facts["base_value"]) == ("lora", "0.55 [0.45, 0.65]",
                                                                               "0.2 [0.1, 0.3]")
    assert facts["found_best"] == ("On held-out subjects, the style classifier finds the most openmoji in the images "
                                   "of lora: P(style) 0.55 [0.45, 0.65], against 0.2 [0.1, 0.3] for the plain base.")
    assert methods.most_in_style(_held_out({"base": 0.2})) is None
    assert methods.style_facts(_held_out({}).reindex(columns=["eval_set", "method", "measure"]),
                               "openmoji")["best_method"] == "not measured (no style classifier)"


def test_cost_facts_compare_dreambooth_with_the_lora(tmp_path):
    records = {("lora", 0): _record(tmp_path, "l0", 100, 2.0, {"lora.safetensors": 1000}),
               ("dreambooth", 0): _record(tmp_path, "d0", 5000, 8.0, {"model/unet/w.safetensors": 4000})}
    facts = methods.cost_facts(methods.cost_summary(methods.cost_table(records)))
    assert (facts["params_ratio"], facts["size_ratio"]) == ("50", "4")
    assert methods.cost_facts(methods.cost_summary(methods.cost_table({("lora", 0): records[("lora", 0)]}))) \
        ["params_ratio"] == "not measured (LoRA or DreamBooth did not run)"


def test_sample_sheet_shows_the_true_image_the_base_and_each_method():
    configs = methods.methods_configs(SMOKE, "openmoji", seeds=[0, 1], context_seeds=1)
    held_out = eval_set("openmoji", "heldout", 3)
    images = {(method, seed, "heldout"): torch.full((3, 3, 32, 32), i, dtype=torch.uint8)
              for i, (method, seed) in enumerate([("base", None), *configs])}
    result = methods.MethodsResult(SMOKE, style="openmoji", configs=configs, records={},
                                   eval_sets={"heldout": held_out}, images=images)
    sheet = methods.sample_sheet(result, "heldout", n=2)
    assert list(dict.fromkeys(sheet.table["column"])) == ["true openmoji", "base", *methods.METHODS]
    assert len(sheet.images) == 2 * (2 + len(methods.METHODS))
    lora = sheet.table.index[sheet.table["column"] == "lora"][0]
    assert (sheet.images[lora] == list(images).index(("lora", 0, "heldout"))).all()  # seed 0's image
