"""Frozen, hashable, JSON-serialisable configuration dataclasses.

Every run in this project is described by a frozen dataclass. Its canonical JSON
(sorted keys, class name included) is hashed to name the run directory, so the same
config always lands in the same place and a finished run can be reused.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Example(Config):
...     rank: int = option(4, "LoRA rank r")
>>> cfg = Example.from_dict({"rank": 8})
>>> cfg.rank, len(cfg.hash())
(8, 12)
>>> Example.from_dict({"rnak": 8})
Traceback (most recent call last):
...
ValueError: Example: unknown key 'rnak'. Valid keys: rank
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

from lora_core.io import atomic_write_text


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (peft's ``field(metadata={"help": ...})`` idiom).

    Mutable defaults (lists, dicts) are not allowed in frozen configs: use tuples.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"option default must be immutable, got {type(default).__name__}: use a tuple")
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: canonical dict/JSON, content hash, strict construction from dicts."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps({"__class__": type(self).__name__, **self.to_dict()}, sort_keys=True, indent=2)

    def hash(self) -> str:
        """First 12 hex digits of the sha256 of the canonical JSON."""
        canonical = json.dumps({"__class__": type(self).__name__, **self.to_dict()}, sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied; unknown keys raise like :meth:`from_dict`."""
        _check_keys(type(self), changes)
        return dataclasses.replace(self, **_coerce_all(type(self), changes))

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        values = {k: v for k, v in values.items() if k != "__class__"}
        _check_keys(cls, values)
        return cls(**_coerce_all(cls, values))

    @classmethod
    def from_json(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save_json(self, path: str | Path) -> Path:
        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for error messages and CLIs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def config_help(cls: type, prefix: str = "", skip: tuple[str, ...] = (), width: int = 100) -> str:
    """Every field of config class ``cls`` as ``key=default  help``, one entry per field, with
    defaults written as ``key=value`` on a command line reads them (YAML); fields that hold a config
    class are expanded under ``<field>.`` (``data.folder``). Command lines print it in ``--help``,
    so the list cannot drift from the dataclasses.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Example(Config):
    ...     folder: str = dataclasses.field(metadata={"help": "image folder"})
    ...     betas: tuple[float, float] = option((0.9, 0.999), "Adam betas")
    ...     base: str | None = option(None, "base model; None: the profile's")
    >>> print(config_help(Example, prefix="data."))
      data.folder=(required)          image folder
      data.betas=[0.9, 0.999]         Adam betas
      data.base=null                  base model; None: the profile's
    """
    hints = typing.get_type_hints(cls)
    lines: list[str] = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        nested = _config_class(hints.get(field.name))
        if nested is not None:
            lines.append(config_help(nested, f"{prefix}{field.name}.", width=width))
            continue
        key = f"  {prefix}{field.name}={_default_text(field)}"
        lines.append(help_entry(key, field.metadata.get("help", ""), width))
    return "\n".join(lines)


def _config_class(hint: Any) -> type | None:
    """The Config subclass a field holds (``Inner`` or ``Inner | None``), else None."""
    candidates = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    found = [c for c in candidates if isinstance(c, type) and issubclass(c, Config)]
    return found[0] if len(found) == 1 else None


def _default_text(field: dataclasses.Field) -> str:
    return "(required)" if field.default is dataclasses.MISSING else value_text(field.default)


def value_text(value: Any) -> str:
    """``value`` as a ``key=value`` command line writes it (parsed as YAML): strings bare.

    >>> [value_text(v) for v in ("lora", "", None, False, 1e-4, (0.9, 0.999))]
    ['lora', "''", 'null', 'false', '0.0001', '[0.9, 0.999]']
    """
    if isinstance(value, str):
        return value if value else "''"
    return json.dumps(_to_jsonable(value))


def help_entry(key: str, help_text: str, width: int = 100, column: int = 34) -> str:
    """``key`` with ``help_text`` wrapped in a column beside it (below it when the key is long)."""
    import textwrap

    indent = " " * column
    if len(key) < column - 1:
        return textwrap.fill(help_text, width, initial_indent=key.ljust(column), subsequent_indent=indent)
    return key + ("\n" + textwrap.fill(help_text, width, initial_indent=indent, subsequent_indent=indent)
                  if help_text else "")


def _check_keys(cls: type, values: dict[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in valid]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ValueError(f"{cls.__name__}: unknown key{plural} {', '.join(repr(k) for k in unknown)}. "
                         f"Valid keys: {', '.join(valid)}")


def _coerce_all(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {k: _coerce(hints.get(k), v, k) for k, v in values.items()}


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """JSON gives lists where configs hold tuples, and nested dicts where they hold configs."""
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
        return hint.from_dict(value)
    if (origin is tuple or hint is tuple) and isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is not None and len(args) == 1:
            return _coerce(args[0], value, name)
    return value


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_yaml(text: str) -> Any:
    """YAML with ``1e-4`` read as a float (PyYAML's YAML 1.1 resolver reads it as a string).

    >>> load_yaml("learning_rate: 1e-4")
    {'learning_rate': 0.0001}
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.nan)$", re.IGNORECASE), list("-+0123456789."))
    return yaml.load(text, Loader=Loader)
