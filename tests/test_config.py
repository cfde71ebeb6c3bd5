import json
from dataclasses import FrozenInstanceError, dataclass

import pytest

from lora_core.config import Config, option
from lora_core.io import atomic_path, atomic_write_json
from lora_core.profiles import PROFILES, get_profile


@dataclass(frozen=True)
class Inner(Config):
    rank: int = option(4, "LoRA rank")


@dataclass(frozen=True)
class Outer(Config):
    name: str = option("run", "a name")
    lr: float = option(1e-4, "learning rate")
    targets: tuple[str, ...] = option(("to_q", "to_k"), "modules")
    inner: Inner = option(Inner(), "nested config")
    alpha: float | None = option(None, "optional")


def test_json_round_trip_preserves_value_and_hash(tmp_path):
    cfg = Outer(name="x", targets=("to_v",), inner=Inner(rank=8), alpha=2.0)
    path = cfg.save_json(tmp_path / "config.json")
    loaded = Outer.from_json(path)
    assert loaded == cfg
    assert loaded.hash() == cfg.hash()
    assert json.loads(path.read_text())["__class__"] == "Outer"


def test_hash_changes_with_any_field_and_class():
    base = Outer()
    assert base.hash() == Outer().hash()
    assert base.replace(lr=2e-4).hash() != base.hash()
    assert base.replace(inner=Inner(rank=5)).hash() != base.hash()

    @dataclass(frozen=True)
    class Other(Config):
        name: str = option("run", "a name")

    assert Other().hash() != Outer(name="run").hash()


def test_int_given_for_float_hashes_like_float():
    assert Outer.from_dict({"lr": 1}).hash() == Outer(lr=1.0).hash()


def test_unknown_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"Outer: unknown key 'lrr'\. Valid keys: name, lr, targets, inner, alpha"):
        Outer.from_dict({"lrr": 1e-3})
    with pytest.raises(ValueError, match=r"unknown keys 'a', 'b'"):
        Outer().replace(a=1, b=2)


def test_configs_are_frozen_and_refuse_mutable_defaults():
    with pytest.raises(FrozenInstanceError):
        Outer().lr = 1.0
    with pytest.raises(TypeError, match="use a tuple"):
        option([1, 2], "a list")


def test_profiles_share_fields_and_overrides_validate():
    assert set(PROFILES) == {"smoke", "tiny", "sd15"}
    assert get_profile("sd15").resolution == 512
    assert get_profile("tiny", train_steps=7).train_steps == 7
    with pytest.raises(ValueError, match="unknown profile 'huge'. Valid profiles: smoke, tiny, sd15"):
        get_profile("huge")
    with pytest.raises(ValueError, match="unknown key 'steps'"):
        get_profile("tiny", steps=3)


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    assert oct(target.stat().st_mode & 0o777) != "0o600"


def test_config_help_lists_every_field_with_default_and_help_and_expands_nested_configs():
    from lora_core.config import config_help

    text = config_help(Outer)
    lines = text.splitlines()
    assert lines[0].split() == ["name=run", "a", "name"]
    assert lines[1].split() == ["lr=0.0001", "learning", "rate"]
    assert lines[2].split() == ['targets=["to_q",', '"to_k"]', "modules"]
    assert lines[3].split() == ["inner.rank=4", "LoRA", "rank"]   # the nested config, one key per field
    assert lines[4].split() == ["alpha=null", "optional"]
    assert config_help(Outer, prefix="x.", skip=("inner",)).splitlines()[-1].split()[0] == "x.alpha=null"


def test_config_help_wraps_long_help_under_its_key():
    from lora_core.config import config_help

    @dataclass(frozen=True)
    class Wordy(Config):
        a_rather_long_option_name_for_a_column: int = option(1, "word " * 30)

    first, *rest = config_help(Wordy, width=60).splitlines()
    assert first == "  a_rather_long_option_name_for_a_column=1"   # too long for the column: help below
    assert rest and all(line.startswith(" " * 34 + "word") and len(line) <= 60 for line in rest)
