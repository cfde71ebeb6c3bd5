"""A chapter's work side by side: :func:`train_many` trains the runs not yet finished in child
processes, as many at once as :func:`lora_core.threads.training_processes` allows, and returns
every record as :func:`lora_core.train.train` would; :func:`map_side_by_side` spreads any jobs
over the same number of children, such as "train a run, then generate and score with it", which
keeps both cores busy from a chapter's first run to its last image.

A tiny run computes with one torch thread (:mod:`lora_core.threads`: a second thread made a step
slower, not faster), so a chapter executed alone on a 2-core machine works on two runs at once
rather than leaving a core idle. Inside the book runner, which already executes one chapter per
core, each kernel works in its own process until a core falls idle (no chapter left to start):
then it takes that core too (:mod:`lora_core.core_slots`). Work gives the same bytes in a
child as in this process (one thread, the same inputs and seeds): results come back pickled, and
what a child leaves behind (runs, features, generated images) is cached by content, so the
parent reads it as if it had computed it; the run lock makes a run asked for by two processes
train once. The parent's wait is charged to one phase (``training``: runs take most of it); a
child writes no phases file of its own. Where a GPU computes, everything stays in this process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence, TypeVar

from lora_core import runs
from lora_core.core_slots import SLOTS_ENV, ExtraSlots
from lora_core.profiling import PHASES_FILE_ENV, phase
from lora_core.threads import apply_thread_policy, side_by_side, training_processes

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
    """``[function(*shared, *args) for function, args in jobs]``: in this process, in order, where
    one process works (:func:`work_processes`), else in as many child processes, each receiving
    ``shared`` (the base model, an evaluator: picklable objects) once, while this process's wait is
    charged to ``waiting_phase``. Children start the jobs in order, so list the longest first. A
    job's function is a module-level function taking the shared objects first (wrap one that
    takes none in :func:`independent`); one that trains calls :func:`trained`. The first
    failure cancels the jobs not yet started and is raised.

    Inside the book runner, before each job it would run here, a kernel also takes the cores
    that no chapter holds any more (:mod:`lora_core.core_slots`; not with ``processes`` given, nor
    on a GPU): from then on the rest of its jobs run in children, one per core it holds."""
    jobs = list(jobs)
    results: list = []
    own, may_take_cores = work_processes(processes), processes is None and not _on_gpu()
    with ExtraSlots() as extra:
        while len(results) < len(jobs):
            remaining = jobs[len(results):]
            count = min(own, len(remaining))
            if may_take_cores and count < len(remaining):
                count += extra.take(len(remaining) - count)
            if count > 1:
                results += _in_children(remaining, shared, count, waiting_phase)
            else:
                function, arguments = remaining[0]
                results.append(function(*shared, *arguments))
    return results


def _in_children(jobs: list[Job], shared: tuple, processes: int, waiting_phase: str) -> list:
    results: list = [None] * len(jobs)
    with phase(waiting_phase):
        for index, result in side_by_side(_call, jobs, processes, initializer=start_child, initargs=shared):
            results[index] = result
    return results


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


def start_child(*shared: Any) -> None:
    """A child: the thread policy, no phases file (its parent charges the wait), no cores beyond
    its own (its parent took them), the libraries' per-load notes and progress bars off, as in a
    chapter, and ``shared`` kept for its calls."""
    global _shared
    _shared = shared
    os.environ.pop(PHASES_FILE_ENV, None)
    os.environ.pop(SLOTS_ENV, None)
    apply_thread_policy()
    from lora_core import cli  # noqa: F401  (drops the libraries' harmless import-time log lines)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def _call(function: Callable[..., Any], arguments: tuple) -> Any:
    return function(*_shared, *arguments)
