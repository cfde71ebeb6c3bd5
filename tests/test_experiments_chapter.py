"""The one chapter shape: run_<chapter> takes the notebook's parameters, facts carry the profile
note, tables lead with their key columns and show no index."""
import ast
import importlib
import inspect
import pkgutil
import re

import pandas as pd
import pytest

import lora_core.experiments
from lora_core.book import NOTEBOOK_DIR, notebook_parameters, toc_notebooks
from lora_core.experiments.chapter import SMOKE_NOTE, ChapterResult, profile_note, resolve_profile, show_table
from lora_core.profiles import get_profile


def _run_functions() -> dict:
    """Every ``run_<chapter>`` function of the experiments package, by name."""
    functions = {}
    for module in pkgutil.iter_modules(lora_core.experiments.__path__):
        loaded = importlib.import_module(f"lora_core.experiments.{module.name}")
        functions.update({name: value for name, value in vars(loaded).items()
                          if name.startswith("run_") and inspect.isfunction(value) and value.__module__ == loaded.__name__})
    return functions


@pytest.mark.parametrize("name", toc_notebooks())
def test_each_notebook_calls_one_run_function_whose_keywords_are_its_parameters(name):
    source = (NOTEBOOK_DIR / f"{name}.py").read_text()
    called = set(re.findall(r"\b(run_[a-z0-9_]+)\(", source))
    functions = _run_functions()
    assert len(called) == 1 and called <= set(functions), f"{name}: calls {called}"
    signature = inspect.signature(functions[called.pop()])
    first, *keywords = signature.parameters.values()
    assert first.name == "profile" and first.default == "tiny"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in keywords)
    defaults = {p.name: p.default for p in keywords if p.name not in ("base", "runs_root")}
    declared = {key: ast.literal_eval(source) for key, source in notebook_parameters(NOTEBOOK_DIR / f"{name}.py").items()}
    declared = {key: tuple(value) if isinstance(value, list) else value for key, value in declared.items()}
    assert declared.pop("profile") == "tiny"
    if "runs_root" in declared:  # the appendix reads a run folder it is given
        assert declared["runs_root"] == signature.parameters["runs_root"].default
        declared.pop("runs_root")
    assert declared == defaults, f"{name}: the parameters cell and {signature} differ"


def test_every_chapters_result_derives_from_chapter_result():
    functions = _run_functions()
    called = {re.search(r"\b(run_[a-z0-9_]+)\(", (NOTEBOOK_DIR / f"{name}.py").read_text()).group(1)
              for name in toc_notebooks()}
    for function in (functions[name] for name in called):
        result_type = inspect.signature(function).return_annotation
        result_class = vars(importlib.import_module(function.__module__))[result_type]
        assert issubclass(result_class, ChapterResult), result_type


def test_profile_note_warns_about_smoke_and_describes_the_others():
    assert profile_note(get_profile("smoke")) == SMOKE_NOTE and "noise" in SMOKE_NOTE
    result = ChapterResult(resolve_profile("tiny"))
    assert result.facts["profile_note"] == f"Profile tiny: {get_profile('tiny').description}."
    assert resolve_profile("smoke", n_seeds=5, train_steps=0).n_seeds == 5
    assert resolve_profile(get_profile("smoke"), n_seeds=None).n_seeds == get_profile("smoke").n_seeds


def test_show_table_leads_with_key_columns_and_hides_the_index():
    frame = pd.DataFrame({"steps": [4, 4], "lr": [0.0001, 0.00012346], "config_hash": ["a1", "b2"],
                          "run": ["twemoji seed 0", "twemoji seed 1"]})
    styler = show_table(frame, first=["run", "config_hash"], caption="runs")
    assert list(styler.data.columns) == ["run", "config_hash", "steps", "lr"]
    html = styler.to_html()
    assert "<caption>runs</caption>" in html and "0.0001235" in html
    assert 'class="row_heading' not in html  # no index column
    assert list(frame.columns) == ["steps", "lr", "config_hash", "run"]  # the caller's frame is untouched
    with pytest.raises(ValueError, match=r"first: no column \['seed'\] in the table"):
        show_table(frame, first=["seed"])


def test_show_table_turns_a_labelled_index_and_column_levels_into_columns():
    wide = pd.DataFrame({"method": ["lora", "lora"], "metric": ["FID", "CLIP"], "value": [1.0, 2.0]}) \
        .pivot_table(index="method", columns="metric", values="value")
    styler = show_table(wide)
    assert list(styler.data.columns) == ["method", "CLIP", "FID"] and styler.data.iloc[0, 0] == "lora"
    multi = pd.DataFrame({("a", 1): [1.0], ("b", 2): [2.0]}, index=pd.Index(["x"], name="key"))
    assert list(show_table(multi).data.columns) == ["key", "a 1", "b 2"]
