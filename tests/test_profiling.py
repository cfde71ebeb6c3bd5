"""Phase timers against a scripted clock, the runner's profile file from a real smoke notebook, the
thread policy that reaches the kernels and the command lines, and the kernels' share of the cores
for training runs side by side."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from lora_core import profiling, threads
from lora_core.cli import run_command


class ScriptedClock:
    """``time`` stand-in whose ``perf_counter`` returns the given readings in turn."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def perf_counter(self) -> float:
        return self.readings.pop(0)


@pytest.fixture
def clock(monkeypatch):
    def install(*readings: float) -> ScriptedClock:
        scripted = ScriptedClock(*readings)
        monkeypatch.setattr(profiling, "time", scripted)
        return scripted
    profiling.reset_phases()
    monkeypatch.delenv(profiling.PHASES_FILE_ENV, raising=False)
    yield install
    profiling.reset_phases()


def test_nested_phases_charge_each_second_once_to_the_innermost(clock):
    # outer opens at 0, inner 2..5, inner again 6..7, outer closes at 10: outer 0-2, 5-6, 7-10
    clock(0.0, 2.0, 5.0, 6.0, 7.0, 10.0)
    with profiling.phase("training"):
        with profiling.phase("generation"):
            pass
        with profiling.phase("generation"):
            pass
    assert profiling.phase_seconds() == {"training": 6.0, "generation": 4.0}
    assert profiling.phase_counts() == {"training": 1, "generation": 2}


def test_a_phase_that_raises_is_still_charged_and_closed(clock):
    clock(0.0, 1.5, 3.0, 3.5)
    with pytest.raises(RuntimeError, match="boom"):
        with profiling.phase("bootstrap"):
            raise RuntimeError("boom")
    with profiling.phase("generation"):        # not nested inside the failed one
        pass
    assert profiling.phase_seconds() == {"bootstrap": 1.5, "generation": 0.5}


def test_the_phases_file_is_written_when_an_outermost_phase_closes(clock, tmp_path, monkeypatch):
    target = tmp_path / "phases.json"
    monkeypatch.setenv(profiling.PHASES_FILE_ENV, str(target))
    clock(0.0, 1.0, 2.0, 4.0)
    with profiling.phase("training"):
        with profiling.phase("features: effnet-lite0"):
            pass
        assert not target.exists()             # an inner phase writes nothing
    written = json.loads(target.read_text())
    assert written["seconds"] == {"training": 3.0, "features: effnet-lite0": 1.0}
    assert written["counts"] == {"training": 1, "features: effnet-lite0": 1}


def test_a_notebook_entry_adds_other_and_shares_and_the_file_merges_entries(tmp_path):
    phases_file = tmp_path / ".a.phases.json"
    phases_file.write_text(json.dumps({"seconds": {"training": 30.0, "bootstrap": 10.0}, "counts": {},
                                       "torch_threads": 1}))
    profile_file = tmp_path / "_profile.json"
    entry = profiling.record_notebook_profile(profile_file, "01_style_benchmark", "tiny", 50.0, phases_file, 1.5)
    assert entry["seconds"] == {"training": 30.0, "bootstrap": 10.0, "other": 10.0}
    assert entry["share"] == {"training": 0.6, "bootstrap": 0.2, "other": 0.2}
    assert not phases_file.exists()            # consumed
    profiling.record_notebook_profile(profile_file, "99_appendix", "tiny", 4.0, tmp_path / "absent.json", None)
    recorded = json.loads(profile_file.read_text())
    assert set(recorded) == {"01_style_benchmark", "99_appendix"}
    assert recorded["99_appendix"]["seconds"] == {"other": 4.0}   # a kernel that ran no phase


def test_the_runner_records_each_notebooks_phases_with_the_policy_threads(tmp_path, monkeypatch):
    from lora_core.book import run_book

    monkeypatch.setenv(threads.THREADS_ENV, "2")   # reaches the kernel through the runner's environment
    run_book("smoke", {}, only=["00_setup"], build=False, root=tmp_path)
    recorded = json.loads((tmp_path / "book" / "notebooks" / profiling.PROFILE_FILE_NAME).read_text())
    entry = recorded["00_setup"]
    assert entry["profile"] == "smoke" and entry["torch_threads"] == 2
    assert entry["seconds"]["generation"] > 0 and entry["counts"]["generation"] == 1   # the sample sheet
    assert sum(entry["seconds"].values()) == pytest.approx(entry["wall_seconds"], abs=0.01)
    assert not list((tmp_path / "book" / "notebooks").glob(".*.phases.json"))


@pytest.mark.parametrize("environ, expected", [
    ({}, 1), ({"OMP_NUM_THREADS": "3"}, 3), ({"LORA_CORE_THREADS": "2", "OMP_NUM_THREADS": "1"}, 2)])
def test_policy_threads_reads_our_variable_then_openmps_then_one(environ, expected):
    assert threads.policy_threads(environ) == expected


def test_a_bad_thread_count_names_the_variable():
    with pytest.raises(ValueError, match=r"^LORA_CORE_THREADS='0': expected a positive number of threads$"):
        threads.policy_threads({"LORA_CORE_THREADS": "0"})


def test_children_get_passive_waiting_above_one_thread_and_the_environment_comes_back(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = dict(os.environ)
    with threads.children_follow_policy() as count:
        assert count == 2 and os.environ["OMP_NUM_THREADS"] == "2" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert dict(os.environ) == before
    assert threads.child_environment({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "2"})["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "OMP_WAIT_POLICY" not in threads.child_environment({})


def test_every_command_line_computes_with_the_policy_threads(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        status = run_command(lambda args: torch.get_num_threads(), argparse.ArgumentParser(), [])
    finally:
        torch.set_num_threads(previous)
    assert status == 1


def test_a_kernel_trains_on_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv(threads.TRAIN_PROCESSES_ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    with threads.kernels_share_cores(2) as share:
        assert share == 2 and os.environ[threads.TRAIN_PROCESSES_ENV] == "2"
        assert threads.training_processes() == 2
    assert threads.TRAIN_PROCESSES_ENV not in os.environ
    assert threads.training_processes() == 4   # a chapter alone: every core
    monkeypatch.setenv(threads.TRAIN_PROCESSES_ENV, "1")   # the user's choice is kept
    with threads.kernels_share_cores(1) as share:
        assert share == 1
    monkeypatch.setenv(threads.TRAIN_PROCESSES_ENV, "two")
    with pytest.raises(ValueError, match=r"^LORA_CORE_TRAIN_PROCESSES='two': expected a positive number of processes$"):
        threads.training_processes()


def test_side_by_side_yields_every_result_and_raises_the_first_failure():
    assert sorted(threads.side_by_side(json.loads, [("[1]",), ("2",), ("{}",)], 2)) == [(0, [1]), (1, 2), (2, {})]
    with pytest.raises(json.JSONDecodeError):
        list(threads.side_by_side(json.loads, [("1",), ("not json",)], 2))
