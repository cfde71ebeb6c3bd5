"""Folders written whole, what a kill leaves, and who removes it."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lora_core import runs
from lora_core.io import atomic_folder, atomic_path, is_temporary, remove_temporaries

REPO = Path(__file__).resolve().parent.parent


def test_a_folder_written_whole_replaces_the_old_one_only_once_complete(tmp_path):
    target = tmp_path / "exports"
    with atomic_folder(target) as staging:
        (staging / "a.safetensors").write_text("first")
    with pytest.raises(RuntimeError, match="cut short"):
        with atomic_folder(target) as staging:
            (staging / "a.safetensors").write_text("second")
            raise RuntimeError("cut short")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]  # the old folder, no staging left
    assert (target / "a.safetensors").read_text() == "first"
    with atomic_folder(target) as staging:
        (staging / "b.safetensors").write_text("third")
    assert sorted(p.name for p in target.iterdir()) == ["b.safetensors"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Writes a file and a folder atomically into argv[1] and SIGKILLs itself before either is renamed.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from lora_core.io import atomic_folder, atomic_path

folder = Path(sys.argv[1])
with atomic_path(folder / "state" / "training_state.pt") as tmp, atomic_folder(folder / "step-000010") as staging:
    tmp.write_bytes(b"half")
    (staging / "pytorch_lora_weights.safetensors").write_bytes(b"one of two")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_writer_leaves_is_recognised_and_removed(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hidden_by_the_user").mkdir(parents=True)
    (run_dir / "notes.tmp.txt").write_text("a user's file")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run_dir)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if is_temporary(p))
    assert [name.split(".")[1] for name in left] == ["step-000010", "training_state"]
    assert not (run_dir / "step-000010").exists() and not (run_dir / "state" / "training_state.pt").exists()
    assert sorted(str(p.relative_to(run_dir)) for p in remove_temporaries(run_dir)) == left
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == [
        ".hidden_by_the_user", "notes.tmp.txt", "state"]
    assert remove_temporaries(run_dir) == [] and remove_temporaries(tmp_path / "absent") == []


def test_a_finished_runs_leftover_state_is_debris_an_unfinished_runs_is_not(tmp_path):
    run_dir = tmp_path / "lora-0123456789ab"
    with atomic_path(run_dir / runs.STATE_FILE) as tmp:
        tmp.write_bytes(b"state")
    assert runs.remove_debris(run_dir) == [] and (run_dir / runs.STATE_FILE).exists()
    (run_dir / "summary.json").write_text(json.dumps({"exports": {}}))
    assert runs.remove_debris(run_dir) == [run_dir / "state"] and not (run_dir / "state").exists()

