"""The reproducibility appendix reads run records: a real smoke run, fake foreign runs, timings."""
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_core import plots
from lora_core.experiments import appendix
from lora_core.profiles import get_profile
from lora_core.train import TrainConfig, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_base):
    """One finished 1-step smoke run, one unfinished smoke run, one run of another profile."""
    root = tmp_path_factory.mktemp("runs")
    images = tmp_path_factory.mktemp("data")
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(images / f"img{i}.png")
        (images / f"img{i}.txt").write_text(f"swatch {i}")
    config = TrainConfig(data={"folder": str(images), "resolution": 32}, base_model="tiny-random",
                         max_train_steps=1, batch_size=2, options={"rank": 4, "alpha": 8.0})
    record = train(config, base=tiny_base, runs_root=root, progress=False)
    unfinished = config.replace(seed=5)
    (root / f"lora-{unfinished.hash()}").mkdir()
    unfinished.save_json(root / f"lora-{unfinished.hash()}" / "config.json")
    foreign = config.replace(base_model="toy:base")
    (root / f"lora-{foreign.hash()}").mkdir()
    foreign.save_json(root / f"lora-{foreign.hash()}" / "config.json")
    (root / "notes-without-config").mkdir()
    return root, record, unfinished.hash(), foreign.hash()


def test_profile_runs_lists_this_profiles_runs_finished_or_not(runs_root):
    root, record, unfinished_hash, foreign_hash = runs_root
    table = appendix.profile_runs(get_profile("smoke"), root)
    assert sorted(table["config_hash"]) == sorted([record.summary["config_hash"], unfinished_hash])
    done = table.set_index("config_hash").loc[record.summary["config_hash"]]
    assert bool(done["finished"]) and done["steps"] == 1 and done["rank"] == 4 and done["alpha"] == 8.0
    assert done["trainable_params"] == record.summary["trainable_params"]
    assert done["torch"] == record.summary["versions"]["torch"]
    assert not table.set_index("config_hash").loc[unfinished_hash, "finished"]
    assert list(appendix.profile_runs(get_profile("tiny"), root)["config_hash"]) == [foreign_hash]


def test_empty_or_missing_runs_folder_gives_an_empty_table_with_columns(tmp_path):
    for root in (tmp_path, tmp_path / "absent"):
        table = appendix.profile_runs(get_profile("smoke"), root)
        assert table.empty and list(table.columns) == list(appendix.RUN_COLUMNS)
    assert appendix.version_table(table).loc[0, "recorded in runs"] == "(no run)"


def test_chapters_using_finds_hashes_in_executed_notebooks(runs_root, tmp_path):
    root, record, unfinished_hash, _ = runs_root
    used_hash = record.summary["config_hash"]
    (tmp_path / "02_rank_lr.ipynb").write_text(json.dumps({"cells": [{"outputs": [{"text": f"lora-{used_hash}"}]}]}))
    (tmp_path / "04_style_mixing.ipynb").write_text(json.dumps({"cells": [{"source": used_hash}]}))
    (tmp_path / "01_style_benchmark.ipynb").write_text("{}")
    assert appendix.chapters_using([used_hash, unfinished_hash], tmp_path) == {
        used_hash: ["02_rank_lr", "04_style_mixing"], unfinished_hash: []}
    table = appendix.runs_used_table(get_profile("smoke"), root, tmp_path).set_index("config_hash")
    assert table.loc[used_hash, "chapters"] == "02_rank_lr, 04_style_mixing"
    assert table.loc[unfinished_hash, "chapters"] == ""


def test_version_table_flags_runs_made_with_another_version(runs_root):
    root, record, _, _ = runs_root
    table = appendix.profile_runs(get_profile("smoke"), root)
    recorded_torch = record.summary["versions"]["torch"]
    same = appendix.version_table(table, current={"torch": recorded_torch}).set_index("library")
    assert same.loc["torch", "agrees"] and same.loc["torch", "recorded in runs"] == recorded_torch
    other = appendix.version_table(table, current={"torch": "0.0.1"}).set_index("library")
    assert not other.loc["torch", "agrees"] and other.loc["torch", "this build"] == "0.0.1"


def test_timings_and_rerun_commands_round_trip_the_parameters(tmp_path):
    timings_file = tmp_path / "_timings.json"
    timings_file.write_text(json.dumps({
        "02_rank_lr": {"wall_seconds": 12.5, "profile": "smoke", "finished_utc": "2026-01-01T00:00:00Z",
                       "parameters": {"profile": "smoke", "ranks": [8, 16], "note": "two words"}}}))
    timings = appendix.notebook_timings(timings_file)
    assert timings.loc[0, "wall_seconds"] == 12.5 and timings.loc[0, "profile"] == "smoke"
    table = appendix.rerun_table(["02_rank_lr", "99_appendix"], timings, "tiny").set_index("notebook")
    words = shlex.split(table.loc["02_rank_lr", "book runner"])
    assert words == ["python", "-m", "lora_core.book", "--profile", "smoke", "--only", "02_rank_lr",
                     "-p", "note", "two words", "-p", "ranks", "[8, 16]"]
    from lora_core.book import parse_overrides
    assert parse_overrides([words[8:10], words[11:13]]) == {"ranks": [8, 16], "note": "two words"}
    assert table.loc["99_appendix", "book runner"] == "python -m lora_core.book --profile tiny --only 99_appendix"
    assert appendix.notebook_timings(tmp_path / "absent.json").empty


def test_timings_figure_draws_a_bar_per_notebook_or_says_none(tmp_path):
    timings = appendix.notebook_timings(Path(tmp_path) / "absent.json")
    assert "no notebook timings" in plots.timings_figure(timings, "tiny").axes[0].texts[0].get_text()
    (tmp_path / "t.json").write_text(json.dumps({n: {"wall_seconds": s, "profile": p, "parameters": {}}
                                                 for n, s, p in [("a", 1.0, "tiny"), ("b", 3.0, "smoke")]}))
    axes = plots.timings_figure(appendix.notebook_timings(tmp_path / "t.json"), "tiny").axes[0]
    assert [round(bar.get_width(), 1) for bar in axes.patches] == [1.0, 3.0] * 2  # longest (= last here), last


def test_timings_keep_the_longest_execution_until_profile_or_parameters_change(tmp_path):
    from lora_core.book import NotebookRun, record_timings

    path = tmp_path / "_timings.json"
    def record(seconds, profile="tiny", **parameters):
        record_timings([NotebookRun("01", tmp_path, seconds, {"profile": profile, **parameters})], profile, path)
        row = appendix.notebook_timings(path).iloc[0]
        return row.wall_seconds, row.longest_wall_seconds
    assert record(690.0) == (690.0, 690.0)  # trains
    assert record(12.0) == (12.0, 690.0)  # reuses the runs
    assert record(15.0, n_seeds=1) == (15.0, 15.0)  # other parameters: another build
    assert record(9.0, "smoke", n_seeds=1) == (9.0, 9.0)  # other profile


def test_timings_leave_out_what_the_runner_provides(tmp_path):
    """The runner hands the appendix its absolute executed_dir: never recorded, so never in a re-run command."""
    from lora_core.book import NotebookRun, record_timings

    path = tmp_path / "_timings.json"
    run = NotebookRun("99_appendix", tmp_path, 3.0, {"profile": "smoke", "executed_dir": str(tmp_path), "runs_root": "r"})
    record_timings([run], "smoke", path)
    assert json.loads(path.read_text())["99_appendix"]["parameters"] == {"profile": "smoke", "runs_root": "r"}
    command = appendix.rerun_table(["99_appendix"], appendix.notebook_timings(path), "smoke").loc[0, "book runner"]
    assert command == "python -m lora_core.book --profile smoke --only 99_appendix -p runs_root r"


def test_run_appendix_counts_runs_and_shows_no_run_folder_path(runs_root, tmp_path):
    root, record, unfinished_hash, _ = runs_root
    (tmp_path / "01_style_benchmark.ipynb").write_text(json.dumps({"cells": [{"source": record.summary["config_hash"]}]}))
    result = appendix.run_appendix("smoke", runs_root=root, executed_dir=tmp_path)
    assert (result.facts["n_runs"], result.facts["n_unfinished"], result.facts["n_used"]) == (1, 1, 1)
    assert result.facts["found_runs"] == "Finished runs of this profile in the run folder: 1 (1 named by an executed chapter)."
    assert result.facts["found_versions"] == "Every run used was trained with this build's library versions."
    assert "run_dir" not in result.runs.columns and str(root) not in result.runs.to_string()
    assert list(result.reruns["notebook"])[0] == "00_setup" and result.timings.empty


# ---- where the time goes ----------------------------------------------------------------------

def write_profile(folder: Path) -> Path:
    """Two notebooks' phase files merged by the runner's own function (lora_core.profiling)."""
    from lora_core import profiling

    target = folder / profiling.PROFILE_FILE_NAME
    for name, wall, seconds, load in (("01_style_benchmark", 100.0, {"training": 40.0, "generation": 30.0,
                                                                   "features: effnet-lite0": 10.0}, 1.5),
                                      ("99_appendix", 5.0, {}, 2.0)):
        phases = folder / f".{name}.phases.json"
        phases.write_text(json.dumps({"seconds": seconds, "counts": {}, "torch_threads": 1}))
        profiling.record_notebook_profile(target, name, "tiny", wall, phases, load)
    return target


def test_the_profile_table_has_a_row_per_notebook_and_a_total(tmp_path):
    phases = appendix.phase_profile(write_profile(tmp_path))
    assert set(phases.notebook) == {"01_style_benchmark", "99_appendix"}
    table = appendix.profile_table(phases)
    assert list(table.columns) == ["training", "generation", "features: effnet-lite0", "other", "wall",
                                   "load (before -> after)"]
    assert table.loc["01_style_benchmark", "training"] == "40 s (40%)"
    assert table.loc["01_style_benchmark", "other"] == "20 s (20%)"           # wall time no phase claimed
    assert table.loc["all notebooks", "other"] == "25 s (24%)" and table.loc["all notebooks", "wall"] == "105 s"
    assert appendix.time_sentence(phases) == ("Of 105 s profiled in 2 notebooks, 38% went to training, "
                                              "29% to generation, 24% to other.")
    assert appendix.phase_profile(tmp_path / "absent.json").empty and appendix.profile_table(
        appendix.phase_profile(tmp_path / "absent.json")).empty


def test_profile_figure_stacks_each_notebooks_phases_or_says_none(tmp_path):
    phases = appendix.phase_profile(write_profile(tmp_path))
    axes = plots.profile_figure(phases, appendix.phase_order(phases.phase)).axes[0]
    widths = [round(bar.get_width(), 1) for bar in axes.patches]
    assert sum(widths) == 105.0 and len(widths) == 2 * 4                   # 2 notebooks x 4 phases
    empty = plots.profile_figure(appendix.phase_profile(tmp_path / "absent.json"), [])
    assert "no phase profile" in empty.axes[0].texts[0].get_text()


def test_benchmark_results_are_read_with_their_figures_and_tabled(tmp_path):
    peer = {"peer": "reproduction of diffusers' example step", "settings": {"steps": 40},
            "machine": {"date_utc": "2026-12-01T00:00:00Z", "cpu_count": 2},
            "load_before": 3.0, "load_after": 4.0,
            "pairs": [{"ours": {"steps_per_s": 3.0, "cpu_s_per_step": 0.3, "peak_rss_bytes": 2**30, "load": 3.0},
                       "peer": {"steps_per_s": 2.0, "cpu_s_per_step": 0.45, "peak_rss_bytes": 2**30, "load": 3.0},
                       "speed_ratio": 1.5, "cpu_ratio": 1.5, "memory_ratio": 1.0}],
            "summary": {key: {"median": value, "min": value, "max": value}
                        for key, value in (("speed_ratio", 1.5), ("cpu_ratio", 1.5), ("memory_ratio", 1.0))}}
    (tmp_path / "peer.json").write_text(json.dumps(peer))
    (tmp_path / "peer.png").write_bytes(b"png")
    results = appendix.benchmark_results(tmp_path)
    assert results["peer"]["figure"] == str(tmp_path / "peer.png")
    [(caption, table)] = appendix.benchmark_tables("peer", results["peer"])
    assert caption.startswith("ours against a reproduction of diffusers' example step")
    assert table.loc[0, "steps/s ours/peer"] == 1.5 and table.loc[0, "peak MiB ours"] == 1024.0
    assert appendix.peer_sentence(results["peer"]) == (
        "Training speed (images per second) against a reproduction of diffusers' example step: 1.50x "
        "(fp32; 1.50-1.50 over 1 interleaved pairs, 1.00x its peak memory); measured 2026-12-01 on 2 cores at load "
        "3.0-4.0.")
    bf16 = {"pairs": [{**peer["pairs"][0], "speed_ratio": 2.0}, {**peer["pairs"][0], "speed_ratio": 1.0}],
            "summary": {**peer["summary"], "speed_ratio": {"median": 1.5, "min": 1.0, "max": 2.0},
                        "memory_ratio": {"median": 2.0, "min": 2.0, "max": 2.0}}}
    both = {**peer, "comparisons": [{"label": "fp32", "pairs": peer["pairs"], "summary": peer["summary"]},
                                    {"label": "bf16", **bf16}]}
    [(_, table)] = appendix.benchmark_tables("peer", both)
    assert table["comparison"].tolist() == ["fp32", "bf16", "bf16"] and table["steps/s ours/peer"].tolist() == [
        1.5, 2.0, 1.0]
    assert appendix.peer_sentence(both).endswith(
        "step: 1.50x (fp32; 1.50-1.50 over 1 interleaved pairs, 1.00x its peak memory); 1.50x (bf16; 1.00-2.00 over 2 "
        "interleaved pairs, 0.50x its peak memory); measured 2026-12-01 on 2 cores at load 3.0-4.0.")
    assert appendix.peer_sentence(None).startswith("The comparison with the peer has not been run here")
    assert appendix.benchmark_results(tmp_path / "absent") == {}


def test_chapters_alone_are_tabled_in_their_order_with_their_phases():
    rows = [{"chapter": name, "commit": "abc1234", "status": 0, "elapsed_s": elapsed, "wall_s": elapsed - 2,
             "training_s": elapsed / 2, "generation_s": 10.0, "features_s": 5.0, "other_s": 3.0, "load_before": 1.0,
             "load_after": 1.1} for name, elapsed in (("07_lora_vs_ti", 284.0), ("05_character_ia3", 563.0))]
    [(caption, table)] = appendix.benchmark_tables("chapters", {"rows": rows})
    assert caption.startswith("each chapter executed alone on its own fresh clone")
    assert table["chapter"].tolist() == ["07_lora_vs_ti", "05_character_ia3"]
    assert table["elapsed_s"].tolist() == [284.0, 563.0] and table["training_s"].tolist() == [142.0, 281.5]
    assert "wall_s" not in table and "status" not in table
