"""The book runner: parameters are checked, failures are named, the smoke book builds."""
import json
import re
from pathlib import Path

import pytest

from lora_core import book, threads
from lora_core.book import NotebookError, check_parameters, execute_notebook, run_book, toc_notebooks

NOTEBOOK = '''# %% [markdown]
# # A test notebook

# %% tags=["parameters"]
profile = "smoke"
divisor = 1

# %%
import os
print("ratio", 10 / divisor, "training processes", os.environ.get("LORA_CORE_TRAIN_PROCESSES"))
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


def test_a_wave_executes_side_by_side_and_records_each_notebook(notebook_dir, tmp_path, monkeypatch):
    for name in ("b", "c"):
        (notebook_dir / f"{name}.py").write_text(NOTEBOOK)
    parameters = {"demo": {"divisor": 4}, "b": {"divisor": 5}, "c": {"divisor": 8}}
    out = tmp_path / "out"
    monkeypatch.delenv(threads.TRAIN_PROCESSES_ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)   # two kernels at once: two cores each
    runs = book.execute_wave(["demo", "b", "c"], parameters, out, "smoke", jobs=2, notebook_dir=notebook_dir)
    assert [run.name for run in runs] == ["demo", "b", "c"]   # book order, whatever finished first
    for run, expected in zip(runs, ("ratio 2.5", "ratio 2.0", "ratio 1.25")):
        assert f"{expected} training processes 2" in run.output.read_text()
    alone = book.execute_wave(["demo"], parameters, tmp_path / "alone", "smoke", jobs=2, notebook_dir=notebook_dir)
    assert "ratio 2.5 training processes 4" in alone[0].output.read_text()
    assert set(json.loads((out / "_timings.json").read_text())) == {"demo", "b", "c"}
    assert set(json.loads((out / "_profile.json").read_text())) == {"demo", "b", "c"}
    assert not list(out.glob(".*.phases.json"))   # every kernel's phases consumed by the runner


def test_a_failing_notebook_in_a_wave_is_named_and_nothing_of_it_is_written(notebook_dir, tmp_path):
    (notebook_dir / "b.py").write_text(NOTEBOOK)
    out = tmp_path / "out"
    with pytest.raises(NotebookError, match=r"notebook b.py failed in cell \d+ .*ZeroDivisionError"):
        book.execute_wave(["demo", "b"], {"demo": {"divisor": 4}, "b": {"divisor": 0}}, out, "smoke", jobs=2,
                          notebook_dir=notebook_dir)
    assert not (out / "b.ipynb").exists()
    assert "b" not in (json.loads((out / "_timings.json").read_text()) if (out / "_timings.json").exists() else {})


@pytest.mark.parametrize("name", toc_notebooks())
def test_every_chapter_has_the_one_notebook_shape(name):
    """Title, question and finding box first; then the hidden parameters cell and one hidden cell
    that calls run_<chapter> and glues its facts; every code cell's input folded away."""
    import jupytext

    cells = jupytext.read(book.NOTEBOOK_DIR / f"{name}.py").cells
    lead = cells[0].source
    assert cells[0].cell_type == "markdown" and lead.startswith("# ")
    assert "**Question.**" in lead and re.search(r"```\{admonition\} What this build found\n:class: tip", lead)
    assert re.findall(r"\{glue:text\}`found_\w+`", lead), f"{name}: the finding box glues no found_* sentence"
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert code[0].metadata["tags"] == ["parameters", "hide-input"]
    assert re.search(r"^result = (\w+\.)?run_\w+\(profile", code[1].source, re.M) and "glue_facts(result.facts)" in code[1].source
    assert all("hide-input" in cell.metadata.get("tags", []) for cell in code), f"{name}: a code cell shows its input"
    assert not any("import" in cell.source for cell in code[2:]), f"{name}: imports belong in the second code cell"


def test_injected_parameters_cell_is_kept_but_removed_from_the_page(notebook_dir, tmp_path):
    run = execute_notebook("demo", {"profile": "smoke", "divisor": 4}, tmp_path / "out", notebook_dir)
    cells = json.loads(run.output.read_text())["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0]["metadata"]["tags"]
    assert "divisor = 4" in "".join(injected[0]["source"])
    assert not any("remove-cell" in c["metadata"].get("tags", []) for c in cells if c is not injected[0])


def test_smoke_book_builds_with_every_chapter_and_figure(smoke_book):
    tmp_path, runs = smoke_book
    assert [r.name for r in runs] == toc_notebooks()
    html_dir = tmp_path / "_build" / "html"
    assert (html_dir / "index.html").exists()
    timings = json.loads((tmp_path / "book" / "notebooks" / "_timings.json").read_text())
    for name in toc_notebooks():
        page = (html_dir / "book" / "notebooks" / f"{name}.html").read_text()
        assert "Traceback" not in page and "Error" not in re.sub(r"<[^>]+>", "", page).split("Contents")[0]
        assert re.search(r'<img [^>]*src="[^"]+\.png"', page), f"{name}: no figure in the page"
        assert "injected-parameters" not in page, f"{name}: papermill's cell reached the page"
        assert timings[name]["profile"] == "smoke"
    appendix = json.loads((tmp_path / "book" / "notebooks" / "99_appendix.ipynb").read_text())
    injected = next(c for c in appendix["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert f"executed_dir = \"{tmp_path / 'book' / 'notebooks'}\"" in "".join(injected["source"])
    assert "executed_dir" not in timings["99_appendix"]["parameters"]
    setup = (html_dir / "book" / "notebooks" / "00_setup.html").read_text()
    assert re.search(r"This build used the <strong>.*smoke.*</strong> profile", setup)
    assert "0.42.1" in setup  # the diffusers version row of the environment table
    intro = re.sub(r"<[^>]+>", "", (html_dir / "book" / "intro.html").read_text())
    assert re.search(r"whose profile was\s+smoke", intro)  # pasted from the chapters of this build
    assert re.search(r"DreamBooth trains\s+\d+x the parameters", intro)
    # check 3 is pasted from chapter 1's executed page: its verdict table and counts
    assert "checks_passed" in setup and re.search(r"In all, <span[^>]*>\d+ of \d+</span> directional", setup)


# ---- the built pages as a reader sees them, in headless Chromium -------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FIRST_SCREEN = (1280, 800)
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:tmp|work|home|root)(?=/|\b)")
PAGE_FACTS = """
const height = window.innerHeight, article = document.querySelector("article.bd-article");
const visible = e => e.checkVisibility({visibilityProperty: true}) && !e.closest("details:not([open])")
    && e.getBoundingClientRect().height > 0;
const top = e => e.getBoundingClientRect().top + window.scrollY;
const right = article.getBoundingClientRect().right;
const scroller = e => { for (let p = e.parentElement; p && p !== article; p = p.parentElement)
    if (["auto", "scroll"].includes(getComputedStyle(p).overflowX)) return p; return null; };
const overflowing = [...article.querySelectorAll(".cell_output table")].filter(t => {
    const box = scroller(t); return t.getBoundingClientRect().right > right + 1 &&
        (box === null || box.getBoundingClientRect().right > right + 1); }).map(t => t.innerText.slice(0, 60));
const indexed = [...article.querySelectorAll(".cell_output table")].filter(t => [...t.querySelectorAll("tbody tr")]
    .every((row, i) => row.firstElementChild.tagName === "TH" && row.firstElementChild.innerText.trim() === String(i))
    && t.querySelector("tbody tr")).map(t => t.innerText.slice(0, 60));
const box = [...article.querySelectorAll(".admonition")].find(a => a.innerText.startsWith("What this build found"));
return {code_on_first_screen: [...article.querySelectorAll(".cell_input")].filter(e => visible(e) && top(e) < height)
            .map(e => e.innerText.slice(0, 60)),
        finding_box_top: box ? top(box) : null, height: height, text: document.body.textContent,
        overflowing_tables: overflowing, index_columns: indexed,
        page_scrolls_sideways: document.documentElement.scrollWidth > window.innerWidth};
"""


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"headless Chromium is not installed ({CHROMIUM} and {CHROMEDRIVER}; `make browser` installs "
                    "them with apt-get as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # selenium must never try to download a driver
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    width, height = FIRST_SCREEN
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def _page_facts(browser, page, timeout_s: float = 120.0) -> dict:
    """PAGE_FACTS of ``page`` once it is parsed: on a loaded machine chromedriver can hand back a
    large file:// page while its article is still being parsed, so wait for it."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    WebDriverWait(browser, timeout_s).until(lambda b: b.execute_script(
        "return document.readyState === 'complete' && document.querySelector('article.bd-article') !== null"))
    return browser.execute_script(PAGE_FACTS)


def test_pages_lead_with_their_finding_and_show_no_machine_path(smoke_book, browser):
    html_dir = smoke_book[0] / "_build" / "html"
    chapters = [html_dir / "book" / "notebooks" / f"{name}.html" for name in toc_notebooks()]
    for page in sorted(html_dir.glob("book/*.html")) + chapters:
        facts = _page_facts(browser, page)
        paths = sorted(set(m.group(0) for m in ABSOLUTE_PATH.finditer(facts["text"])))
        assert not paths, f"{page.name}: machine paths {paths}"
        assert not facts["page_scrolls_sideways"], f"{page.name}: the page is wider than the window"
        if page in chapters:
            assert facts["code_on_first_screen"] == [], f"{page.name}: code on the first screen"
            # the box starts in the upper three quarters of the first screen: its first sentences
            # are read without scrolling
            assert facts["finding_box_top"] is not None and facts["finding_box_top"] < 0.75 * facts["height"], \
                f"{page.name}: the 'What this build found' box does not lead the page"
            assert facts["overflowing_tables"] == [], f"{page.name}: tables run past the page edge"
            assert facts["index_columns"] == [], f"{page.name}: tables with a pandas index column"


def test_readme_layout_names_every_module_of_the_package():
    """The layout table is where a newcomer looks for where behaviour lives: every top-level module
    and subpackage of lora_core, and every chapter module of lora_core/experiments, is in it."""
    readme = (book.REPO_ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Environment")]
    package = book.REPO_ROOT / "lora_core"
    names = [p.name if p.suffix == ".py" else f"{p.name}/" for p in package.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()]
    names += [p.name for p in (package / "experiments").glob("*.py") if p.name != "__init__.py"]
    missing = sorted(name for name in names if f"`{name}`" not in layout and f"`lora_core/{name}`" not in layout)
    assert not missing, f"README's layout table leaves out {missing}"


def test_math_is_typeset_from_the_books_own_mathjax(smoke_book, browser):
    """The background page's formulas render with no network: MathJax comes from the built book."""
    from selenium.webdriver.support.ui import WebDriverWait

    html_dir = smoke_book[0] / "_build" / "html"
    page = html_dir / "book" / "background.html"
    sources = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page.read_text(), flags=re.IGNORECASE)
    assert sources and not [s for s in sources if "://" in s], sources
    assert (page.parent / sources[0].split("?")[0]).resolve() == (html_dir / "mathjax" / "tex-mml-chtml.js").resolve()
    browser.get(page.as_uri())
    WebDriverWait(browser, 120).until(lambda b: b.execute_script("return document.querySelectorAll('mjx-container').length > 0"))


def test_mathjax_is_staged_once_and_a_missing_bundle_is_named(tmp_path):
    from lora_core.book import MATHJAX_PARTS, NotebookError, stage_mathjax

    source = tmp_path / "es5"
    for part in MATHJAX_PARTS:
        file = source / part if part.endswith(".js") else source / part / "x.js"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(part)
    (source / "sre").mkdir()   # not a part: not copied
    stage_mathjax(tmp_path / "out", source)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted({p.split("/")[0] for p in MATHJAX_PARTS})
    marker = tmp_path / "out" / "ui" / "kept"
    marker.write_text("")
    stage_mathjax(tmp_path / "out", source)   # the same bundle: nothing copied again
    assert marker.exists()
    with pytest.raises(NotebookError, match=r"missing/tex-mml-chtml\.js is missing.*make setup"):
        stage_mathjax(tmp_path / "out2", tmp_path / "missing")
