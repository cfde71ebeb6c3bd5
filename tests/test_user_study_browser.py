"""The study page in a real browser: Debian's headless Chromium driven by selenium.

Two participants take the study from a ``file://`` page (one by keyboard for a set, one failing
an attention check), download their answer files, and the analysis reads them back. Skipped only
where Debian's ``chromium`` and ``chromium-driver`` are not installed.
"""
import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from lora_core.user_study.analysis import analyse_folder
from lora_core.user_study.kit import build_kit, load_manifest
from lora_core.user_study.shuffle import fnv1a32, mulberry32, trial_order

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="Debian's chromium and chromium-driver are not installed (make test installs them as root with apt-get)")
OPTIONS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A kit of four subjects; one image is large (drawn smooth), the rest small (drawn pixelated)."""
    root = tmp_path_factory.mktemp("browser-study")
    for shade, role in ((220, "original"), (150, "lora"), (80, "ti")):
        (root / "images" / role).mkdir(parents=True)
        for k, subject in enumerate(("bridge", "tower", "temple", "castle")):
            size = 160 if (role, k) == ("lora", 0) else 16 + k
            Image.new("RGB", (size, size), (shade, 40 * k, 255 - shade)).save(root / "images" / role / f"{subject}.png")
    return build_kit(root / "images", root / "kit")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # selenium must never try to fetch a driver
    options = webdriver.ChromeOptions()
    for option in OPTIONS:
        options.add_argument(option)
    options.binary_location = str(CHROMIUM)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous


def open_page(driver, kit):
    driver.get((kit / "index.html").resolve().as_uri())


def shown_ids(driver):
    return {name: driver.find_element("id", f"picture-{name.lower()}").get_attribute("data-image-id")
            for name in ("original", "A", "B")}


def planned_choices(manifest, shown, index, fail_checks):
    """What a participant picks in one set: LoRA to buy except in the first study set, LoRA's style,
    "neither" recognisable in the first two study sets and only LoRA after; checks as asked."""
    roles = {side: manifest["key"]["images"][shown[side]]["role"] for side in ("A", "B")}
    side_of = {role: side for side, role in roles.items()}
    if "attention copy" in side_of:
        copy, blank = side_of["attention copy"], side_of["attention blank"]
        return {"buy": copy, "style": blank if fail_checks else copy, "recognisable": copy}
    return {"buy": side_of["ti" if index == 0 else "lora"], "style": side_of["lora"],
            "recognisable": "neither" if index < 2 else side_of["lora"]}


def take_study(driver, kit, code, fail_checks=False, keyboard=False):
    """Answer every set on the page as :func:`planned_choices` says; return the sets as shown."""
    from selenium.webdriver.common.keys import Keys

    manifest = load_manifest(kit)
    open_page(driver, kit)
    driver.find_element("id", "code").send_keys(code, Keys.ENTER)
    assert driver.switch_to.active_element.get_attribute("id") == "trial-heading"
    shown_sets, study_index, n_sets = [], 0, len(manifest["page"]["trials"])
    for position in range(n_sets):
        assert driver.find_element("id", "trial-heading").text == f"Set {position + 1} of {n_sets}"
        shown = shown_ids(driver)
        shown_sets.append(shown)
        kind = manifest["key"]["images"][shown["A"]]["role"]
        choices = planned_choices(manifest, shown, study_index, fail_checks)
        study_index += kind in ("lora", "ti")
        for question, value in choices.items():
            radio = driver.find_element("id", f"{question}-{value}")
            radio.send_keys(Keys.SPACE) if keyboard else radio.click()
        next_button = driver.find_element("id", "next")
        next_button.send_keys(Keys.ENTER) if keyboard else next_button.click()
    assert driver.find_element("id", "done").is_displayed()
    return shown_sets


def downloaded(driver, name, timeout=20.0):
    path = driver.downloads / name
    deadline = time.monotonic() + timeout
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.is_file(), f"{name} was not downloaded: {sorted(p.name for p in driver.downloads.iterdir())}"
    return path


def test_two_participants_take_the_study_and_their_files_are_analysed(browser, kit, tmp_path):
    manifest = load_manifest(kit)
    shown = {"P-alpha": take_study(browser, kit, "P-alpha", keyboard=True)}
    browser.find_element("id", "download").click()
    first = downloaded(browser, "answers-P-alpha.json")
    assert first.read_text() == browser.find_element("id", "answers-text").get_attribute("value")
    shown["P-beta"] = take_study(browser, kit, "P-beta", fail_checks=True)
    browser.find_element("id", "download").click()
    second = downloaded(browser, "answers-P-beta.json")

    for path in (first, second):
        shutil.copy(path, tmp_path)
    for code, sets in shown.items():
        data = json.loads((tmp_path / f"answers-{code}.json").read_text())
        order = trial_order(manifest["page"]["trials"], manifest["kit_id"], code)
        assert data["order"] == order
        assert [{"original": s["original"], "A": s["A"], "B": s["B"]} for s in order] == sets
    result = analyse_folder(tmp_path, kit, n_resamples=200)
    assert result.dropped == ("P-beta",) and result.n_kept == 1
    table = result.table.set_index("question")
    assert table[["count", "answers"]].values.tolist() == [[3, 4], [4, 4], [2, 4]]
    assert table.loc["buy", "proportion"] == 0.75 and table.loc["recognisable", "chance"] == 0.25
    assert sorted(result.answers["recognisable"]) == ["lora only", "lora only", "neither", "neither"]


def test_page_asks_again_for_a_bad_code_or_a_half_answered_set(browser, kit):
    open_page(browser, kit)
    browser.find_element("id", "code").send_keys("my name")
    browser.find_element("id", "start").click()
    assert browser.find_element("id", "intro").is_displayed()
    assert "Please enter the code you were given" in browser.find_element("id", "code-error").text
    browser.find_element("id", "code").clear()
    browser.find_element("id", "code").send_keys("P-gamma")
    browser.find_element("id", "start").click()
    browser.find_element("id", "buy-A").click()
    browser.find_element("id", "next").click()  # style and recognisable unanswered: the browser refuses
    assert browser.find_element("id", "trial-heading").text.startswith("Set 1 of")
    sizes = {img.get_attribute("data-image-id"): img.get_attribute("class")
             for img in browser.find_elements("css selector", ".pictures img")}
    manifest = load_manifest(kit)
    for image_id, css_class in sizes.items():
        assert css_class == ("small" if manifest["page"]["images"][image_id]["width"] < 128 else "")


def test_page_shuffle_is_the_python_shuffle(browser, kit):
    manifest = load_manifest(kit)
    open_page(browser, kit)
    codes = [f"code-{i}" for i in range(40)] + ["A", "zz_9", "-"]
    page_orders = browser.execute_script("return arguments[0].map(window.userStudy.trialOrder)", codes)
    assert page_orders == [trial_order(manifest["page"]["trials"], manifest["kit_id"], code) for code in codes]
    assert browser.execute_script("return window.userStudy.hashCode(arguments[0])", "foobar") == fnv1a32("foobar")
    draws = browser.execute_script(
        "var d = window.userStudy.mulberry32(arguments[0]); return [d(), d(), d(), d()]", 2**32 - 7)
    draw = mulberry32(2**32 - 7)
    assert draws == [draw() for _ in range(4)]


def test_page_requests_nothing_but_its_own_files(browser, kit):
    """Every request the browser makes while a participant takes the study and downloads the file."""
    browser.get_log("performance")  # drop what earlier tests logged
    take_study(browser, kit, "P-delta")
    browser.find_element("id", "download").click()
    downloaded(browser, "answers-P-delta.json")
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "the performance log recorded no requests at all"
    assert {urlparse(url).scheme for url in urls} <= {"file", "blob", "data"}, urls
    kit_root = kit.resolve().as_uri()
    assert all(url.startswith(kit_root) for url in urls if url.startswith("file:"))
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_the_built_book_serves_chapter_sevens_kit_and_a_participant_takes_it_there(smoke_book, browser, tmp_path):
    """The smoke book's chapter 7 page links to the kit built from that chapter's own images; a
    participant follows the link, takes the study in the built book, and its answers are analysed."""
    from lora_core.experiments.subject_sets import set_folder

    html = smoke_book[0] / "_build" / "html"
    browser.get((html / "book" / "notebooks" / "07_lora_vs_ti.html").as_uri())
    browser.find_element("link text", "open the study page").click()
    kit = html / "user-study"
    assert browser.current_url == (kit / "index.html").as_uri()
    manifest = load_manifest(kit)
    subjects = {entry["subject"] for entry in manifest["key"]["images"].values()}
    assert len(subjects) == 5 and all((set_folder("landmarks", "heldout") / f"{s}.png").is_file() for s in subjects)
    take_study(browser, kit, "P-book")
    browser.find_element("id", "download").click()
    shutil.copy(downloaded(browser, "answers-P-book.json"), tmp_path)
    result = analyse_folder(tmp_path, kit, n_resamples=200)
    assert result.dropped == () and result.n_kept == 1
    # planned_choices: TI bought in the first study set only, LoRA's style always, "neither" twice
    assert result.table.set_index("question")[["count", "answers"]].values.tolist() == [[4, 5], [5, 5], [2, 5]]
