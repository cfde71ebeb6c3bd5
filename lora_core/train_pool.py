"""Train a chapter's runs side by side: :func:`train_many` trains the runs not yet finished in
child processes, as many at once as :func:`lora_core.threads.training_processes` allows, and
returns every record as :func:`lora_core.train.train` would.

A tiny run computes with one torch thread (:mod:`lora_core.threads`: a second thread made a step
slower, not faster), so a chapter executed alone on a 2-core machine trains two runs at once
rather than leaving a core idle. Inside the book runner, which already executes one chapter per
core, each kernel trains one run at a time in its own process, as before. A run trains the same
in a child as in this process (one thread, its own seed: the same bytes), and the run lock makes a
run asked for by two processes train once. The parent's wait is charged to the ``training``
phase; a child writes no phases file of its own. Where a GPU trains, runs train one at a time
in this process.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Hashable, Mapping, TypeVar

from lora_core import runs
from lora_core.profiling import PHASES_FILE_ENV, phase
from lora_core.threads import apply_thread_policy, side_by_side, training_processes

if TYPE_CHECKING:
    from lora_core.train import TrainConfig

Key = TypeVar("Key", bound=Hashable)


def train_many(configs: Mapping[Key, TrainConfig], base=None, runs_root: str | Path | None = None,
               processes: int | None = None) -> dict[Key, runs.RunRecord]:
    """``{key: train(config)}`` for every config, the distinct unfinished ones first trained
    ``processes`` at a time (default :func:`training_processes`; one where a GPU trains them, as
    runs side by side would share its memory) in child processes. The first failure cancels the
    runs not yet started, waits for the running ones and is raised."""
    import torch

    from lora_core.train import train

    unfinished = {config.hash(): config for config in configs.values()
                  if not (runs.run_dir_for(config.method, config.hash(), runs_root) / "summary.json").exists()}
    processes = min(processes or (1 if torch.cuda.is_available() else training_processes()), len(unfinished))
    if processes > 1:
        with phase("training"):
            list(side_by_side(train_in_child, [(config, runs_root) for config in unfinished.values()],
                              processes, initializer=start_child))
    return {key: train(config, base=base, runs_root=runs_root, progress=False) for key, config in configs.items()}


def start_child() -> None:
    """A training child: the thread policy, no phases file (its parent charges the wait), and the
    libraries' per-load notes and progress bars off, as in a chapter."""
    os.environ.pop(PHASES_FILE_ENV, None)
    apply_thread_policy()
    from lora_core import cli  # noqa: F401  (drops the libraries' harmless import-time log lines)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def train_in_child(config: TrainConfig, runs_root: str | Path | None) -> str:
    """Train (or reuse) one run; its folder."""
    from lora_core.train import train

    return str(train(config, runs_root=runs_root, progress=False).run_dir)
