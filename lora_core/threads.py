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

>>> policy_threads({})
1
>>> policy_threads({"LORA_CORE_THREADS": "2", "OMP_NUM_THREADS": "4"})
2
>>> sorted(child_environment({"LORA_CORE_THREADS": "2"}).items())
[('LORA_CORE_THREADS', '2'), ('MKL_NUM_THREADS', '2'), ('OMP_NUM_THREADS', '2'), ('OMP_WAIT_POLICY', 'PASSIVE')]
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

THREADS_ENV = "LORA_CORE_THREADS"
DEFAULT_THREADS = 1


def policy_threads(environ: Mapping[str, str] | None = None) -> int:
    """``LORA_CORE_THREADS``, else ``OMP_NUM_THREADS``, else :data:`DEFAULT_THREADS`; a value that
    is not a positive integer is an error naming the variable."""
    environ = os.environ if environ is None else environ
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value!r}: expected a positive number of threads")
            return int(value)
    return DEFAULT_THREADS


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
