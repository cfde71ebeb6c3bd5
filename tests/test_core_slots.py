"""Cores as slots between the book runner and its kernels (lora_core.core_slots), and a kernel's
jobs moving to children once it holds a second core (lora_core.train_pool.map_side_by_side)."""
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from lora_core import core_slots
from lora_core.train_pool import independent, map_side_by_side


@pytest.fixture(autouse=True)
def no_runner_slots(monkeypatch):
    monkeypatch.delenv(core_slots.SLOTS_ENV, raising=False)


def test_without_a_runner_nothing_is_taken_and_a_chapter_does_not_wait():
    assert core_slots.take_free(4) == []
    with core_slots.held_slot("01_a"), core_slots.ExtraSlots() as extra:
        assert extra.take(2) == 0


def test_the_folder_lives_while_inside_and_the_variable_is_restored(monkeypatch):
    monkeypatch.setenv(core_slots.SLOTS_ENV, "outer")
    with core_slots.slot_folder(3, chapters=2) as folder:
        assert os.environ[core_slots.SLOTS_ENV] == str(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["chapters", "slot-0", "slot-1", "slot-2"]
    assert not folder.exists()
    assert os.environ[core_slots.SLOTS_ENV] == "outer"


def test_a_kernel_takes_only_free_slots_and_only_once_every_chapter_started():
    with core_slots.slot_folder(3, chapters=2):
        with core_slots.held_slot("01_a"):
            with core_slots.ExtraSlots() as early:
                assert early.take(2) == 0                 # 02_b has not started: its core is not spare
            with core_slots.held_slot("02_b"):
                assert core_slots.every_chapter_started()
                with core_slots.ExtraSlots() as extra:
                    assert extra.take(5) == 1             # three cores, two chapters
                    assert extra.take(5) == 1             # kept, not taken twice
                    with core_slots.ExtraSlots() as other:
                        assert other.take(1) == 0
                with core_slots.ExtraSlots() as again:    # returned on exit
                    assert again.take(1) == 1


def test_a_slot_held_by_another_process_is_freed_when_it_dies():
    with core_slots.slot_folder(1, chapters=1) as folder:
        holder = subprocess.Popen([sys.executable, "-c", (
            "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)"), str(folder / "slot-0")], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        assert core_slots.take_free(1) == []
        holder.kill()
        holder.wait()
        taken = core_slots.take_free(1)
        assert len(taken) == 1
        taken[0].close()


def test_a_chapter_waits_for_a_free_slot():
    events = []
    with core_slots.slot_folder(1, chapters=2):
        with core_slots.held_slot("01_a"):
            waiting = threading.Thread(target=lambda: _run_chapter("02_b", events))
            waiting.start()
            time.sleep(3 * core_slots.WAIT_S)
            events.append("01_a ends")
        waiting.join(timeout=10)
    assert events == ["01_a ends", "02_b runs"]


def _run_chapter(name, events):
    with core_slots.held_slot(name):
        events.append(f"{name} runs")


def test_jobs_move_to_children_once_the_kernel_holds_a_second_core(monkeypatch):
    monkeypatch.setenv("LORA_CORE_TRAIN_PROCESSES", "1")      # this kernel's share: its own core
    pid = independent(os.getpid, ())
    with core_slots.slot_folder(2, chapters=2) as folder:
        other_starts = independent(pathlib.Path.touch, (folder / "started-02_b",))
        with core_slots.held_slot("01_a"):
            assert set(map_side_by_side([pid, pid], processes=1)) == {os.getpid()}   # processes given: never more
            results = map_side_by_side([pid, other_starts, pid, pid, pid])
            with core_slots.ExtraSlots() as extra:
                assert extra.take(1) == 1                      # the second core, given back
    here, started, *later = results
    assert here == os.getpid() and started is None             # 02_b had not started: in this process
    assert os.getpid() not in later and len(set(later)) <= 2   # then in two children
