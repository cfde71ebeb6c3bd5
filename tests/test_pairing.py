"""Paired .ipynb notebooks for Colab and Kaggle stay in sync with the .py notebooks, carry the
badge and the set-up cell generated from _config.yml, and the built book's chapters launch them."""
import json
import re
import shutil
from pathlib import Path

import pytest

from lora_core import pairing
from lora_core.pairing import LaunchSettings, launch_settings, out_of_sync, paired_notebook, write_pairs

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = LaunchSettings("https://github.com/example-owner/example-repo", "dev")


def test_the_committed_pairs_are_in_sync_with_the_notebooks():
    problems = out_of_sync()
    assert not problems, "run `python -m lora_core.pairing` and commit notebooks/ipynb/:\n" + "\n".join(problems)


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns("ipynb"))
    write_pairs(folder, folder / "ipynb", SETTINGS)
    return folder


def test_a_changed_new_or_deleted_notebook_is_out_of_sync_until_paired(notebooks):
    paired = notebooks / "ipynb"
    assert out_of_sync(notebooks, paired, SETTINGS) == []
    with open(notebooks / "02_rank_lr.py", "a") as f:
        f.write("\n# %%\nprint('a new cell')\n")
    shutil.copy(notebooks / "00_setup.py", notebooks / "07_new_chapter.py")
    (notebooks / "04_style_mixing.py").unlink()
    assert out_of_sync(notebooks, paired, SETTINGS) == [
        "07_new_chapter.ipynb: missing (new notebook 07_new_chapter.py not paired)",
        "04_style_mixing.ipynb: stale (its .py notebook is gone)",
        "02_rank_lr.ipynb: out of date (its .py notebook or _config.yml changed)"]
    write_pairs(notebooks, paired, SETTINGS)
    assert out_of_sync(notebooks, paired, SETTINGS) == []
    assert out_of_sync(notebooks, paired, LaunchSettings(SETTINGS.repository_url, "main")) != []  # the setting


def test_a_pair_is_the_notebook_with_a_badge_first_and_the_setup_after_its_parameters(notebooks):
    import jupytext

    source = jupytext.read(notebooks / "01_style_benchmark.py")
    pair = json.loads((notebooks / "ipynb" / "01_style_benchmark.ipynb").read_text())
    cells = pair["cells"]
    assert pair["metadata"]["kernelspec"]["name"] == "python3" and pair["nbformat"] == 4
    assert [c["id"] for c in cells] == [f"cell-{i:02d}" for i in range(len(cells))]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in cells if c["cell_type"] == "code")
    badge = "".join(cells[0]["source"])
    url = "github.com/example-owner/example-repo/blob/dev/notebooks/ipynb/01_style_benchmark.ipynb"
    assert f"(https://colab.research.google.com/{url.replace('github.com', 'github')})" in badge
    assert f"(https://kaggle.com/kernels/welcome?src=https://{url})" in badge
    setup = next(i for i, c in enumerate(cells) if "platform-setup" in c["metadata"].get("tags", []))
    assert "parameters" in cells[setup - 1]["metadata"]["tags"]
    assert '"https://github.com/example-owner/example-repo", "dev"' in "".join(cells[setup]["source"])
    original = [c for i, c in enumerate(cells) if i not in (0, setup)]
    assert ["".join(c["source"]) for c in original] == [c.source for c in source.cells]


def test_every_notebook_has_its_committed_pair():
    names = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py"))
    assert sorted(p.stem for p in pairing.PAIRED_DIR.glob("*.ipynb")) == names


def test_the_setting_comes_from_config_and_must_be_github(tmp_path):
    settings = launch_settings()
    assert settings.repository_url.startswith("https://github.com/") and settings.branch == "main"
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://gitlab.com/owner/repo\n")
    with pytest.raises(ValueError, match=r"_config.yml: repository.url must be a GitHub repository .*gitlab"):
        launch_settings(config)


def test_the_setup_cell_runs_and_changes_nothing_outside_colab_and_kaggle(monkeypatch, capsys):
    """The generated cell as a notebook runs it: here lora_core imports, so nothing is cloned, and
    prepare() only checks the device."""
    for name in ("COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)
    namespace = {"profile": "tiny"}
    cell = paired_notebook(ROOT / "notebooks" / "00_setup.py", SETTINGS).cells[3]
    assert "platform-setup" in cell.metadata["tags"]
    exec(cell.source, namespace)
    assert namespace["profile"] == "tiny"
    assert "[set-up] local" in capsys.readouterr().out


def test_the_built_book_launches_the_paired_notebook_on_colab_and_kaggle(tmp_path):
    """A one-page book with the project's _config.yml: the chapter page's launch buttons point at
    notebooks/ipynb/<name>.ipynb on the configured repository and branch."""
    import nbformat

    from lora_core.book import build_html, stage_book

    stage_book(tmp_path)
    (tmp_path / "book" / "_toc.yml").write_text("format: jb-book\nroot: book/notebooks/demo\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Demo chapter"),
                                               nbformat.v4.new_code_cell("1 + 1")])
    notebook.metadata["kernelspec"] = dict(pairing.KERNELSPEC)
    (tmp_path / "book" / "notebooks").mkdir()
    nbformat.write(notebook, tmp_path / "book" / "notebooks" / "demo.ipynb")
    page = build_html(tmp_path).parent / "book" / "notebooks" / "demo.html"
    html = page.read_text()
    links = launch_settings().links("demo")
    for platform in ("Colab", "Kaggle"):
        assert re.search(rf'<a href="{re.escape(links[platform.lower()])}"[^>]*title="Launch on {platform}"', html), \
            f"no {platform} launch button to the paired notebook"
