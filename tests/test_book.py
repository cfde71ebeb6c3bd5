"""The book runner: parameters are checked, failures are named, the smoke book builds."""
import json
import re

import pytest

from lora_core import book
from lora_core.book import NotebookError, check_parameters, execute_notebook, run_book, toc_notebooks

NOTEBOOK = '''# %% [markdown]
# # A test notebook

# %% tags=["parameters"]
profile = "smoke"
divisor = 1

# %%
print("ratio", 10 / divisor)
'''


@pytest.fixture
def notebook_dir(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "demo.py").write_text(NOTEBOOK)
    (folder / "no_params.py").write_text("# %%\nx = 1\n")
    return folder


def test_toc_lists_every_notebook_once_and_each_exists():
    names = toc_notebooks()
    assert names[0] == "00_setup"
    assert len(names) == len(set(names))
    for name in names:
        assert (book.NOTEBOOK_DIR / f"{name}.py").exists(), name


def test_unknown_parameter_is_refused_with_the_valid_ones(notebook_dir):
    with pytest.raises(NotebookError, match="demo.py: unknown parameter divsor. Valid parameters: profile, divisor"):
        check_parameters(notebook_dir / "demo.py", {"divsor": 2})
    with pytest.raises(NotebookError, match="unknown profile 'huge'"):
        check_parameters(notebook_dir / "demo.py", {"profile": "huge"})
    with pytest.raises(NotebookError, match="no cell tagged 'parameters'"):
        check_parameters(notebook_dir / "no_params.py", {})


def test_whole_book_refuses_a_parameter_no_notebook_defines():
    with pytest.raises(NotebookError, match="no notebook defines n_sampels"):
        run_book("smoke", {"n_sampels": 3}, build=False)


def test_parameters_reach_the_notebook(notebook_dir, tmp_path):
    run = execute_notebook("demo", {"profile": "smoke", "divisor": 4}, tmp_path / "out", notebook_dir)
    outputs = json.loads(run.output.read_text())
    text = "".join("".join(o.get("text", "")) for c in outputs["cells"] for o in c.get("outputs", []))
    assert "ratio 2.5" in text
    assert outputs["metadata"]["kernelspec"]["name"] == "python3"


def test_failing_notebook_names_notebook_and_cell_and_writes_nothing(notebook_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NotebookError, match=r"notebook demo.py failed in cell \d+ .*ZeroDivisionError") as info:
        execute_notebook("demo", {"divisor": 0}, out, notebook_dir)
    assert "10 / divisor" in str(info.value)
    assert [p.name for p in out.iterdir()] == []


def test_smoke_book_builds_with_every_chapter_and_figure(tmp_path):
    """Executes every notebook in the smoke profile and builds the HTML in a temporary root."""
    runs = run_book("smoke", {}, root=tmp_path)
    assert [r.name for r in runs] == toc_notebooks()
    html_dir = tmp_path / "_build" / "html"
    assert (html_dir / "index.html").exists()
    timings = json.loads((tmp_path / "book" / "notebooks" / "_timings.json").read_text())
    for name in toc_notebooks():
        page = (html_dir / "book" / "notebooks" / f"{name}.html").read_text()
        assert "Traceback" not in page and "Error" not in re.sub(r"<[^>]+>", "", page).split("Contents")[0]
        assert re.search(r'<img [^>]*src="[^"]+\.png"', page), f"{name}: no figure in the page"
        assert timings[name]["profile"] == "smoke"
    appendix = json.loads((tmp_path / "book" / "notebooks" / "99_appendix.ipynb").read_text())
    injected = next(c for c in appendix["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert f"executed_dir = \"{tmp_path / 'book' / 'notebooks'}\"" in "".join(injected["source"])
    setup = (html_dir / "book" / "notebooks" / "00_setup.html").read_text()
    assert re.search(r"This build used the <strong>.*smoke.*</strong> profile", setup)
    assert "0.42.1" in setup  # the diffusers version row of the environment table
    intro = re.sub(r"<[^>]+>", "", (html_dir / "book" / "intro.html").read_text())
    assert re.search(r"whose profile was\s+smoke", intro)  # pasted from the chapters of this build
    assert re.search(r"DreamBooth trains\s+\d+x the parameters", intro)
    # check 3 is pasted from chapter 1's executed page: its verdict table and counts
    assert "checks_passed" in setup and re.search(r"In all, <span[^>]*>\d+ of \d+</span> directional", setup)
