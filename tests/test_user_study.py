"""The user-study kit: the shuffle's twin of the page, building the kit, reading answer files."""
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from lora_core.user_study import kit as kit_module
from lora_core.user_study.__main__ import main
from lora_core.user_study.analysis import analyse_folder
from lora_core.user_study.answers import answer_file, check_answer_file, read_answer_folder
from lora_core.user_study.design import PAGE_VERSION, ROLES
from lora_core.user_study.kit import build_kit, load_manifest, read_image_folder
from lora_core.user_study.shuffle import check_code, fnv1a32, mulberry32, trial_order

SUBJECTS = ("boat", "cat", "fox", "owl", "tree")
COLOURS = {"original": (200, 60, 60), "lora": (60, 160, 60), "ti": (60, 60, 200)}


def write_image_folder(root: Path, subjects=SUBJECTS) -> Path:
    """Small distinct PNGs in the documented layout."""
    for role, colour in COLOURS.items():
        (root / role).mkdir(parents=True, exist_ok=True)
        for k, subject in enumerate(subjects):
            image = Image.new("RGB", (24 + k, 24), colour)
            image.putpixel((k, k), (255, 255, 255))
            image.save(root / role / f"{subject}.png")
    return root


@pytest.fixture(scope="module")
def built_kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return build_kit(write_image_folder(root / "images"), root / "kit")


def pick(shown, manifest, role):
    """The page option ("A"/"B") that shows the image of ``role`` in one shown set."""
    roles = manifest["key"]["images"]
    return "A" if roles[shown["A"]]["role"] == role else "B"


def honest_choices(manifest, code, buy_role="lora"):
    """Choices for every set: buy ``buy_role``, style LoRA, recognise only LoRA; checks answered right."""
    choices = []
    for shown in trial_order(manifest["page"]["trials"], manifest["kit_id"], code):
        if manifest["key"]["trials"][shown["trial"]]["kind"] == "attention":
            copy = pick(shown, manifest, "attention copy")
            choices.append({"buy": copy, "style": copy, "recognisable": copy})
        else:
            choices.append({"buy": pick(shown, manifest, buy_role), "style": pick(shown, manifest, "lora"),
                            "recognisable": pick(shown, manifest, "lora")})
    return choices


# --- the shuffle ---------------------------------------------------------------------------------

def test_fnv1a32_matches_the_reference_test_vectors():
    # From the FNV reference test suite (Fowler/Noll/Vo, test_fnv.c): FNV-1a 32-bit.
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_mulberry32_matches_the_published_javascript():
    # Values printed by node 20 running the canonical one-line mulberry32 (bryc/code, PRNGs.md).
    draw = mulberry32(0xDEADBEEF)
    assert [draw() for _ in range(5)] == [0.9413696140982211, 0.26719574979506433, 0.772033357527107,
                                          0.35816076025366783, 0.47554167779162526]
    draw = mulberry32(0xFFFFFFFF)
    assert [draw() for _ in range(3)] == [0.8964226141106337, 0.189478256739676, 0.7156526781618595]


def test_trial_order_is_a_seeded_permutation_with_balanced_sides(built_kit):
    manifest = load_manifest(built_kit)
    trials = manifest["page"]["trials"]
    orders = {code: trial_order(trials, manifest["kit_id"], code) for code in (f"P{i}" for i in range(400))}
    assert trial_order(trials, manifest["kit_id"], " P7 ") == orders["P7"]
    for order in orders.values():
        assert sorted(shown["trial"] for shown in order) == sorted(t["id"] for t in trials)
    assert len({tuple(s["trial"] for s in order) for order in orders.values()}) > 300
    first_trial, first_candidate = trials[0]["id"], trials[0]["candidates"][0]
    shown_as_a = sum(shown["A"] == first_candidate for order in orders.values() for shown in order
                     if shown["trial"] == first_trial)
    assert 160 < shown_as_a < 240  # about half of 400 (binomial sd 10)


def test_participant_codes_are_checked():
    assert check_code(" ab_C-9 ") == "ab_C-9"
    for bad in ("", "two words", "naïve", "x" * 33):
        with pytest.raises(ValueError, match="must be 1-32 characters"):
            check_code(bad)


# --- building the kit ----------------------------------------------------------------------------

def test_kit_holds_page_images_and_key(built_kit):
    manifest = load_manifest(built_kit)
    page, key = manifest["page"], manifest["key"]
    assert len(page["trials"]) == 5 + 2 and len(page["images"]) == 21
    roles = [entry["role"] for entry in key["images"].values()]
    assert {role: roles.count(role) for role in ROLES} == {"original": 7, "lora": 5, "ti": 5}
    assert sorted(p.name for p in (built_kit / "images").iterdir()) == sorted(f"{i}.png" for i in page["images"])
    for image_id, entry in key["images"].items():
        written = (built_kit / "images" / f"{image_id}.png").read_bytes()
        if entry["source"]:
            assert written == (built_kit.parent / "images" / entry["source"]).read_bytes()
        else:  # the attention check's grey square
            assert set(Image.open(built_kit / "images" / f"{image_id}.png").getdata()) == {kit_module.BLANK_GREY}
    for check in key["attention"].values():
        assert key["images"][check["style"]]["role"] == "attention copy"


def test_page_is_blind_and_makes_no_network_calls(built_kit):
    html = (built_kit / "index.html").read_text()
    assert not re.search(r"https?://", html, re.IGNORECASE)
    assert not re.search(r"\bfetch\b|XMLHttpRequest|sendBeacon|WebSocket|EventSource|import\(", html)
    assert not re.search(r"<link|@import|url\(", html)  # no external style sheets or fonts
    assert "connect-src 'none'" in html
    embedded = json.loads(re.search(r'<script type="application/json" id="kit-data">(.*?)</script>', html, re.S)
                          .group(1).replace("<\\/", "</"))
    assert embedded == load_manifest(built_kit)["page"]
    text = json.dumps({**embedded, "page_version": ""}).lower()
    assert not any(word in text for word in ("lora", '"ti"', "attention", "copy", "blank", *SUBJECTS))
    assert all(trial["candidates"] == sorted(trial["candidates"]) for trial in embedded["trials"])


def test_build_is_deterministic_and_replaces_an_older_kit(tmp_path, built_kit):
    source = built_kit.parent / "images"
    first = build_kit(source, tmp_path / "a")
    second = build_kit(source, tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert first.stat().st_mode & 0o055 == 0o055  # readable by a web server, not private to us
    (first / "images" / "stale.png").write_bytes(b"old")
    build_kit(source, first)
    assert not (first / "images" / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folders left


def test_build_refuses_to_overwrite_a_folder_that_is_not_a_kit(tmp_path, built_kit):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes exists and is not a user-study kit"):
        build_kit(built_kit.parent / "images", tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_a_bad_folder_gets_one_error_listing_every_problem(tmp_path):
    root = write_image_folder(tmp_path / "images")
    (root / "lora" / "owl.png").unlink()
    (root / "ti" / "extra.png").write_bytes((root / "ti" / "cat.png").read_bytes())
    (root / "ti" / "notes.txt").write_text("x")
    (root / "original" / "fox.png").write_bytes(b"not a png")
    with pytest.raises(ValueError) as error:
        read_image_folder(root)
    message = str(error.value)
    assert message.startswith(f"{root}: not a user-study image folder (<folder>/{{original,lora,ti}}/<subject>.png")
    for problem in ("lora/ lacks owl.png", "ti/extra.png has no original", "ti/notes.txt is not a .png file"):
        assert problem in message
    (root / "lora" / "owl.png").write_bytes((root / "lora" / "cat.png").read_bytes())
    (root / "ti" / "extra.png").unlink()
    (root / "ti" / "notes.txt").unlink()
    with pytest.raises(ValueError, match=r"original/fox.png is not a readable PNG"):
        read_image_folder(root)
    with pytest.raises(ValueError, match="missing subfolder lora/"):
        read_image_folder(_only_originals(tmp_path))
    with pytest.raises(ValueError, match="is not a folder"):
        read_image_folder(tmp_path / "absent")


def test_a_plan_needs_one_image_per_role_and_subject():
    images = [kit_module.SourceImage(role, "cat", None, role, 8, 8) for role in ("original", "lora")]
    with pytest.raises(ValueError, match=r"missing \['ti/cat'\], unknown roles \[\], 0 duplicated"):
        kit_module.plan_kit(images)
    with pytest.raises(ValueError, match="n_attention must be >= 0"):
        kit_module.plan_kit(images + [kit_module.SourceImage("ti", "cat", None, "t", 8, 8)], n_attention=-1)


def _only_originals(tmp_path):
    root = tmp_path / "originals-only"
    (root / "original").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "original" / "cat.png")
    (root / "ti").mkdir()
    Image.new("RGB", (8, 8)).save(root / "ti" / "cat.png")
    return root


def test_command_line_builds_and_reports_a_bad_folder(tmp_path, capsys, built_kit):
    assert main(["build", "--from", str(built_kit.parent / "images"), "--out", str(tmp_path / "kit")]) == 0
    assert (tmp_path / "kit" / "index.html").read_bytes() == (built_kit / "index.html").read_bytes()
    assert main(["build", "--from", str(tmp_path / "absent"), "--out", str(tmp_path / "kit2")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "kit2").exists()


# --- answer files --------------------------------------------------------------------------------

def test_answer_files_round_trip_and_are_unblinded(tmp_path, built_kit, capsys):
    manifest = load_manifest(built_kit)
    answers = tmp_path / "answers"
    answers.mkdir()
    for code, buy in (("P01", "lora"), ("P02", "ti"), ("P03", "lora")):
        data = answer_file(manifest, code, honest_choices(manifest, code, buy))
        (answers / f"answers-{code}.json").write_text(json.dumps(data))
    result = analyse_folder(answers, built_kit, n_resamples=100)
    assert result.n_files == 3 and result.dropped == ()
    assert sorted(result.answers["subject"].unique()) == list(SUBJECTS)
    table = result.table.set_index("question")
    assert table.loc["buy", "count"] == 10 and table.loc["buy", "answers"] == 15
    assert table.loc["style", "count"] == 15
    assert table.loc["recognisable", "count"] == 0  # "only LoRA" every time, never "neither"
    assert set(result.answers["recognisable"]) == {"lora only"}
    assert main(["analyse", "--kit", str(built_kit), "--answers", str(answers)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("3 participants, 0 dropped for failing the attention checks, 3 analysed")
    assert re.match(r"\s*buy\s+chose LoRA\s+0.50\s+3\s+15\s+10\s+0.666667\s", printed[2])


def test_failed_attention_checks_drop_the_participant(tmp_path, built_kit):
    manifest = load_manifest(built_kit)
    choices = honest_choices(manifest, "P09")
    order = trial_order(manifest["page"]["trials"], manifest["kit_id"], "P09")
    check = next(i for i, s in enumerate(order) if manifest["key"]["trials"][s["trial"]]["kind"] == "attention")
    choices[check] = {**choices[check], "recognisable": "neither"}
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "a.json").write_text(json.dumps(answer_file(manifest, "P09", choices)))
    (answers / "b.json").write_text(json.dumps(answer_file(manifest, "P10", honest_choices(manifest, "P10"))))
    result = analyse_folder(answers, built_kit, n_resamples=100)
    assert result.dropped == ("P09",) and result.n_kept == 1
    assert result.summary().endswith("2 participants, 1 dropped for failing the attention checks, 1 analysed")
    assert analyse_folder(answers, built_kit, n_resamples=100, max_failed_checks=1).dropped == ()


@pytest.mark.parametrize("tamper, message", [
    (lambda d: d.update(page_version="old page"), "page_version 'old page' is not this kit's"),
    (lambda d: d.update(kit_id="0" * 12), "kit_id '000000000000' is not this kit's"),
    (lambda d: d["order"].reverse(), "its order is not the one the page shows for code 'P01'"),
    (lambda d: d.update(participant_code="P02"), "its order is not the one the page shows for code 'P02'"),
    (lambda d: d["image_ids"].pop(), "its image ids are not this kit's"),
    (lambda d: d["answers"].pop(), "7 trials shown but answers has 6 entries"),
    (lambda d: d["answers"][0].update(buy=d["order"][0]["original"]), "'buy' must be one of its images A or B"),
    (lambda d: d["answers"][1].update(recognisable=[d["order"][1]["A"]] * 2), "'recognisable' must list distinct"),
    (lambda d: d.pop("shown"), "not an answer file of this study"),
])
def test_a_tampered_answer_file_is_refused_by_name(built_kit, tamper, message):
    manifest = load_manifest(built_kit)
    data = answer_file(manifest, "P01", honest_choices(manifest, "P01"))
    check_answer_file(json.loads(json.dumps(data)), manifest, "answers-P01.json")
    tamper(data)
    with pytest.raises(ValueError, match=r"answers-P01\.json: (trial t[0-9a-f]+: )?" + re.escape(message)):
        check_answer_file(data, manifest, "answers-P01.json")


def test_answer_folder_errors_name_the_file(tmp_path, built_kit):
    manifest = load_manifest(built_kit)
    with pytest.raises(ValueError, match="no answer files"):
        read_answer_folder(tmp_path, manifest)
    data = answer_file(manifest, "P01", honest_choices(manifest, "P01"))
    (tmp_path / "one.json").write_text(json.dumps(data))
    (tmp_path / "two.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"two.json: participant code 'P01' also answered in .*one.json"):
        read_answer_folder(tmp_path, manifest)
    (tmp_path / "two.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"two.json: not a JSON file"):
        read_answer_folder(tmp_path, manifest)


def test_manifest_of_another_page_version_is_refused(tmp_path, built_kit):
    manifest = load_manifest(built_kit)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "page_version": "page 0"}))
    with pytest.raises(ValueError, match=f"page version 'page 0', this code reads '{PAGE_VERSION}'"):
        load_manifest(tmp_path)
    with pytest.raises(ValueError, match="no kit manifest here"):
        load_manifest(tmp_path / "absent")
