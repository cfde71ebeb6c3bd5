"""A chapter's work side by side: :func:`train_many` trains the runs not yet finished, as many at
once as :func:`lora_core.threads.training_processes` allows, and returns every record as
:func:`lora_core.train.train` would; :func:`map_side_by_side` spreads any jobs over this process
and child processes beside it, such as "train a run, then generate and score with it", which
keeps both cores busy from a chapter's first run to its last image.

A tiny run computes with one torch thread (:mod:`lora_core.threads`: a second thread made a step
slower, not faster), so a chapter executed alone on a 2-core machine works on two runs at once
(one here, one in a child) rather than leaving a core idle. Inside the book runner, which already
executes one chapter per core, each kernel works in its own process until a core falls idle (no
chapter left to start): then a child takes that core at once, even while a job runs here
(:mod:`lora_core.core_slots`). Work gives the same bytes in a child as in this process (one
thread, the same inputs and seeds): results come back pickled, and what a child leaves behind
(runs, features, generated images) is cached by content, so the parent reads it as if it had
computed it; the run lock makes a run asked for by two processes train once. This process's wait
for its children's last jobs is charged to one phase (``training``: runs take most of it); a child
writes no phases file of its own. Where a GPU computes, everything stays in this process.
"""
from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence, TypeVar

from lora_core import runs
from lora_core.core_slots import SLOTS_ENV, ExtraSlots
from lora_core.profiling import PHASES_FILE_ENV, phase
from lora_core.threads import apply_thread_policy, training_processes, usable_cores

if TYPE_CHECKING:
    from lora_core.train import TrainConfig

Key = TypeVar("Key", bound=Hashable)
Job = tuple[Callable[..., Any], tuple]   # a module-level function and its (picklable) arguments
_shared: tuple = ()                        # a child's objects from map_side_by_side, set once per child


def work_processes(processes: int | None = None) -> int:
    """``processes``, else one where a GPU computes (side by side, runs would share its memory),
    else :func:`lora_core.threads.training_processes`."""
    return processes or (1 if _on_gpu() else training_processes())


def train_many(configs: Mapping[Key, TrainConfig], base=None, runs_root: str | Path | None = None,
               processes: int | None = None) -> dict[Key, runs.RunRecord]:
    """``{key: train(config)}`` for every config, the distinct unfinished ones first trained by
    :func:`map_side_by_side` (``processes`` at a time, :func:`work_processes`). The first failure
    cancels the runs not yet started, waits for the running ones and is raised."""
    from lora_core.train import train

    unfinished = {config.hash(): config for config in configs.values()
                  if not (runs.run_dir_for(config.method, config.hash(), runs_root) / "summary.json").exists()}
    map_side_by_side([(trained, (config, runs_root)) for config in unfinished.values()], shared=(base,),
                     processes=processes)
    return {key: train(config, base=base, runs_root=runs_root, progress=False) for key, config in configs.items()}


def map_side_by_side(jobs: Sequence[Job], shared: tuple = (), processes: int | None = None,
                     waiting_phase: str = "training") -> list:
    """``[function(*shared, *args) for function, args in jobs]``. This process computes the jobs in
    order, the first one first; where more than one process works (:func:`work_processes`), child
    processes, each receiving a copy of ``shared`` (the base model, an evaluator: picklable objects,
    copied before the first job), take the next ones beside it, and this process's wait for the
    last of them is charged to ``waiting_phase``. Jobs start in order, so list the longest first.
    A job's function is a module-level function taking the shared objects first (wrap one that
    takes none in :func:`independent`); one that trains calls :func:`trained`. The first failure
    cancels the jobs not yet started, waits for the running ones and is raised.

    Inside the book runner, a kernel also takes the cores that no chapter holds any more
    (:mod:`lora_core.core_slots`; not with ``processes`` given, nor on a GPU) as soon as they fall
    idle, even in the middle of a job here: from then on a child per core it holds takes jobs too."""
    jobs = list(jobs)
    children = work_processes(processes) - 1
    may_take_cores = processes is None and bool(os.environ.get(SLOTS_ENV)) and not _on_gpu()
    if len(jobs) < 2 or not (children or may_take_cores):
        return [function(*shared, *arguments) for function, arguments in jobs]
    queue = JobQueue(jobs)
    claimed = queue.claim()   # the first job is this process's
    helpers = ChildHelpers(queue, pickle.dumps(shared), children, may_take_cores)
    helpers.start()
    try:
        while claimed is not None:
            index, (function, arguments) = claimed
            queue.finish(index, function(*shared, *arguments))
            claimed = queue.claim()
    except BaseException as error:
        queue.fail(error)
    finally:
        with phase(waiting_phase):
            helpers.join()
    return queue.results()


class JobQueue:
    """Jobs handed out in order to this process and its child helpers, with their results; the
    first failure stops the handing out and is raised by :meth:`results`."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs, self.next, self.done = jobs, 0, [None] * len(jobs)
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def claim(self) -> tuple[int, Job] | None:
        """The next job and its index; None once every job is handed out or one failed."""
        with self.lock:
            if self.error is not None or self.next == len(self.jobs):
                return None
            self.next += 1
            return self.next - 1, self.jobs[self.next - 1]

    def unclaimed(self) -> int:
        with self.lock:
            return 0 if self.error is not None else len(self.jobs) - self.next

    def finish(self, index: int, result: Any) -> None:
        self.done[index] = result

    def fail(self, error: BaseException) -> None:
        with self.lock:
            self.error = self.error or error

    def results(self) -> list:
        if self.error is not None:
            raise self.error
        return self.done


class ChildHelpers(threading.Thread):
    """A thread that runs jobs of a :class:`JobQueue` in spawned child processes beside the one
    computing here: ``children`` of them, plus one per core taken from the book runner once every
    chapter has started (:class:`lora_core.core_slots.ExtraSlots`, looked for every ``POLL_S``).
    Each child starts from ``payload``, the pickled shared objects. It ends when no job is left to
    hand out and its children's jobs have finished; the cores it took go back then."""

    POLL_S = 0.5

    def __init__(self, queue: JobQueue, payload: bytes, children: int, may_take_cores: bool) -> None:
        super().__init__(name="lora-core-child-helpers", daemon=True)
        self.queue, self.payload, self.children, self.may_take_cores = queue, payload, children, may_take_cores

    def run(self) -> None:
        try:
            self._hand_out()
        except BaseException as error:   # reaches the caller through the queue, never lost in a thread
            self.queue.fail(error)

    def _hand_out(self) -> None:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        running: dict = {}
        # children start when first needed; at most as many as may work at once, so that one never
        # starts for a job handed out just before a finished child counts as idle again
        most = self.children + (usable_cores() - 1 if self.may_take_cores else 0)
        pool = ProcessPoolExecutor(max(1, most), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_child, initargs=(self.payload,))
        with pool, ExtraSlots() as extra:
            while running or self.queue.unclaimed():
                wanted = self.children
                if self.may_take_cores and self.queue.unclaimed():
                    wanted += extra.take(len(running) + self.queue.unclaimed() - self.children)
                while len(running) < wanted and (claimed := self.queue.claim()) is not None:
                    index, job = claimed
                    running[pool.submit(_call, *job)] = index
                if not running:
                    time.sleep(self.POLL_S)
                    continue
                done, _ = wait(running, timeout=self.POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    if future.exception() is not None:
                        self.queue.fail(future.exception())
                    else:
                        self.queue.finish(index, future.result())


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def trained(base, config: TrainConfig | None, runs_root: str | Path | None = None) -> runs.RunRecord | None:
    """A job's run, trained on ``base`` (None: the config's base model, loaded) or reused; None
    without a config (a job for the base)."""
    from lora_core.train import train

    return None if config is None else train(config, base=base, runs_root=runs_root, progress=False)


def independent(function: Callable[..., Any], arguments: tuple) -> Job:
    """A job for :func:`map_side_by_side` that takes none of the shared objects (the features of
    a chapter's real images, say)."""
    return _without_shared, (function, arguments)


def _without_shared(*shared_then_call: Any) -> Any:
    function, arguments = shared_then_call[-2:]
    return function(*arguments)


def start_child(payload: bytes) -> None:
    """A child: the thread policy, no phases file (its parent charges the wait), no cores beyond
    its own (its parent took them), the libraries' per-load notes and progress bars off, as in a
    chapter, and the shared objects pickled in ``payload`` kept for its calls."""
    global _shared
    os.environ.pop(PHASES_FILE_ENV, None)
    os.environ.pop(SLOTS_ENV, None)
    apply_thread_policy()
    from lora_core import cli  # noqa: F401  (drops the libraries' harmless import-time log lines)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    _shared = pickle.loads(payload)


def _call(function: Callable[..., Any], arguments: tuple) -> Any:
    return function(*_shared, *arguments)
