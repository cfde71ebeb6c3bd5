"""How many threads torch computes with: one decision, applied by the book runner (to every
notebook's kernel) and by every command line (:func:`lora_core.cli.run_command`).

**One thread per process**, unless ``LORA_CORE_THREADS`` (or an explicit ``OMP_NUM_THREADS``)
says otherwise. Measured on the 2-core machines this book is built on (tiny UNet, batch 16, while
other CPU-bound processes ran: load 10-12), seconds per training step, two runs each:

- 1 thread: 0.87 and 1.24
- 2 threads, OpenMP's default wait policy (spinning): 15.7 and 19.7
- 2 threads, ``OMP_WAIT_POLICY=PASSIVE``: 1.31 and 1.20

With two threads each parallel region waits for both; when another process holds a core, the
waiting thread spins instead of yielding it, and a step runs 13-23x slower. One thread cannot fall
into that trap, computes the tiny UNet near one core's peak (about 60 GFLOP/s), and gives the same
numbers whatever the core count of the machine. On an idle machine a second thread can still
help: ``LORA_CORE_THREADS=2`` opts in, and the processes started here then also get
``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep), which measured no slower than one thread under
load. OpenMP reads that variable when torch loads, so a command line cannot set it for itself:
export it in the shell before running a CLI with more threads.

The second core goes to a second process instead: a chapter trains its runs, and generates and
scores with them, :func:`training_processes` at a time (:mod:`lora_core.train_pool`), cores over
threads unless ``LORA_CORE_TRAIN_PROCESSES`` says otherwise; the book runner, which executes
chapters side by side, sets that variable to each kernel's share of the cores.

>>> policy_threads({})
1
>>> policy_threads({"LORA_CORE_THREADS": "2", "OMP_NUM_THREADS": "4"})
2
>>> sorted(child_environment({"LORA_CORE_THREADS": "2"}).items())
[('LORA_CORE_THREADS', '2'), ('MKL_NUM_THREADS', '2'), ('OMP_NUM_THREADS', '2'), ('OMP_WAIT_POLICY', 'PASSIVE')]
>>> training_processes({"LORA_CORE_TRAIN_PROCESSES": "3"})
3
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Mapping

THREADS_ENV = "LORA_CORE_THREADS"
TRAIN_PROCESSES_ENV = "LORA_CORE_TRAIN_PROCESSES"
DEFAULT_THREADS = 1


def policy_threads(environ: Mapping[str, str] | None = None) -> int:
    """``LORA_CORE_THREADS``, else ``OMP_NUM_THREADS``, else :data:`DEFAULT_THREADS`; a value that
    is not a positive integer is an error naming the variable."""
    environ = os.environ if environ is None else environ
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = _positive(environ, name, "threads")
        if value:
            return value
    return DEFAULT_THREADS


def training_processes(environ: Mapping[str, str] | None = None) -> int:
    """Runs a chapter trains at once: ``LORA_CORE_TRAIN_PROCESSES``, else the usable cores over
    :func:`policy_threads` (at least one)."""
    environ = os.environ if environ is None else environ
    return _positive(environ, TRAIN_PROCESSES_ENV, "processes") or kernel_training_processes(1, policy_threads(environ))


def kernel_training_processes(kernels: int, threads: int, cores: int | None = None) -> int:
    """Runs each of ``kernels`` kernels executing at once may train at a time: its share of the
    ``cores`` (default :func:`usable_cores`) at ``threads`` each, at least one.

    >>> kernel_training_processes(2, 1, cores=2), kernel_training_processes(1, 1, cores=2)
    (1, 2)
    """
    return max(1, (cores or usable_cores()) // (threads * kernels))


@contextlib.contextmanager
def kernels_share_cores(kernels: int) -> Iterator[int]:
    """Processes started inside (``kernels`` notebook kernels executing at once) train
    :func:`kernel_training_processes` runs at a time, unless ``LORA_CORE_TRAIN_PROCESSES`` is set
    already; restored afterwards. Yields the count."""
    share = os.environ.get(TRAIN_PROCESSES_ENV) or str(kernel_training_processes(kernels, policy_threads()))
    with environment_variable(TRAIN_PROCESSES_ENV, share):
        yield int(share)


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[str]:
    """``os.environ[name] = value`` while inside (processes started there inherit it); the previous
    value, or its absence, restored afterwards. Yields ``value``."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield value
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform says, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _positive(environ: Mapping[str, str], name: str, what: str) -> int | None:
    """``environ[name]`` as a positive integer, None when unset or empty; anything else is an
    error naming the variable."""
    value = environ.get(name, "").strip()
    if value and (not value.isdigit() or int(value) < 1):
        raise ValueError(f"{name}={value!r}: expected a positive number of {what}")
    return int(value) if value else None


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` with the policy's thread count for OpenMP and MKL and, above one thread, the
    passive wait policy (a value the caller set is kept)."""
    environ = dict(os.environ if environ is None else environ)
    threads = str(policy_threads(environ))
    environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if int(threads) > 1:
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return environ


@contextlib.contextmanager
def children_follow_policy() -> Iterator[int]:
    """Processes started inside (notebook kernels) get :func:`child_environment`; this process's
    environment is restored afterwards. Yields the thread count."""
    saved = dict(os.environ)
    os.environ.update(child_environment())
    try:
        yield policy_threads()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def apply_thread_policy() -> int:
    """Set torch's intra-op threads in this process to the policy's count; returns it."""
    import torch

    threads = policy_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def side_by_side(function: Callable[..., Any], arguments: list[tuple], processes: int,
                 initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[tuple[int, Any]]:
    """``function(*arguments[i])`` for every ``i`` in ``processes`` spawned processes (each first
    calls ``initializer(*initargs)``); yields ``(i, result)`` as each finishes. The first failure
    cancels the calls not yet started, waits for the running ones and is raised."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=initializer, initargs=initargs) as pool:
        pending = {pool.submit(function, *args): index for index, args in enumerate(arguments)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                if future.exception() is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise future.exception()
                yield index, future.result()
