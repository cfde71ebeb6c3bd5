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


def _pid_once_two_processes_work(folder: pathlib.Path) -> tuple[int, bool]:
    """This process's id, once jobs have started in two processes; and whether they did within 30 s."""
    (folder / f"job-{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while len(list(folder.glob("job-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid(), len(list(folder.glob("job-*"))) == 2


def test_a_core_freed_during_a_job_here_is_taken_at_once_by_a_child(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_CORE_TRAIN_PROCESSES", "1")      # this kernel's share: its own core
    pid = independent(os.getpid, ())
    with core_slots.slot_folder(2, chapters=2) as folder:
        with core_slots.held_slot("01_a"):
            assert set(map_side_by_side([pid, pid], processes=1)) == {os.getpid()}   # processes given: never more
            # 02_b starts, and the second core falls free, while the first job already runs here
            threading.Timer(1.0, (folder / "started-02_b").touch).start()
            results = map_side_by_side([independent(_pid_once_two_processes_work, (tmp_path,))] * 2)
            with core_slots.ExtraSlots() as extra:
                assert extra.take(1) == 1                      # the second core, given back
    (here, met_here), (there, met_there) = results
    assert here == os.getpid() and there != os.getpid()        # the first job here, the second in a child
    assert met_here and met_there                              # both ran at once: the child did not wait for the first


def _fail_marked(mark: pathlib.Path) -> None:
    mark.touch()
    raise ValueError("this job fails")


def _touch_once_marked(mark: pathlib.Path, path: pathlib.Path) -> None:
    """Touch ``path`` a second after ``mark`` appears (waiting at most 30 s)."""
    deadline = time.monotonic() + 30
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    path.touch()


def test_a_failure_in_a_child_is_raised_once_the_job_here_ends_and_later_jobs_never_start(tmp_path):
    mark = tmp_path / "failing job started"
    jobs = [independent(_touch_once_marked, (mark, tmp_path / "job here")), independent(_fail_marked, (mark,)),
            independent(pathlib.Path.touch, (tmp_path / "later job",))]
    with pytest.raises(ValueError, match="^this job fails$"):
        map_side_by_side(jobs, processes=2)        # the first job here, the second in a child
    assert (tmp_path / "job here").exists() and not (tmp_path / "later job").exists()
