"""Relative paths point under the project root, whatever the working directory."""
from pathlib import Path

from lora_core import paths, runs


def test_relative_paths_resolve_under_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("data/styles") == Path(runs.__file__).resolve().parent.parent / "data" / "styles"
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"
    assert paths.resolve("~/images") == Path.home() / "images"
    assert runs.run_dir_for("lora", "0123456789ab", "runs") == paths.REPO_ROOT / "runs" / "lora-0123456789ab"
    assert runs.DEFAULT_RUNS_ROOT.is_absolute()
