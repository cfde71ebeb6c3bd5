"""What every ``python -m lora_core...`` command line shares: ``--debug``, user errors as one line.

A command is a parser from :func:`command_parser` and a function of the parsed arguments, run by
:func:`run_command`, which decides how an exception reaches the user:

* a **user error**, bad input the user can fix (a dataset, a config file, a parameter), prints one
  line ``error: <file or parameter>: <problem>`` on stderr and exits with status 2, as argparse
  does for a bad option. User errors are :class:`UserError`, the ``OSError``\\ s of a missing or
  unreadable path, a ``ValueError`` that this package's own checks raise (config values,
  ``DatasetError``, a weights file that is not safetensors) and a file that does not parse. A
  ``ValueError`` from inside numpy or torch is a bug: it keeps its traceback;
* a **failure** the command expects (a notebook that fails, a loss that diverges) prints its
  message, which may span lines, and exits with status 1;
* anything else is a bug and keeps its traceback; ``--debug`` keeps it for every error.

>>> parser = command_parser("python -m example", "An example.")
>>> def command(args):
...     print("ran")
>>> run_command(command, parser, [])
ran
0
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from lora_core.threads import apply_thread_policy


class UserError(Exception):
    """Bad input a user can fix, where no built-in type fits; the message names the file or parameter."""


PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
PACKAGE_DIR = Path(__file__).resolve().parent


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is bad input the user can fix (see the module docstring)."""
    if isinstance(error, (UserError, *PATH_ERRORS, json.JSONDecodeError, UnicodeDecodeError)):
        return True
    return isinstance(error, ValueError) and _raised_in_package(error)


def _raised_in_package(error: BaseException) -> bool:
    """Whether the innermost frame that raised ``error`` is this package's code (a deliberate check)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


# Log lines that libraries print on import and that say nothing about this project's work:
# logger name -> message start (peft imports bitsandbytes, whose optional CPU 4-bit kernel we never use).
# Dropped as soon as a command line imports this module, so that an error is the only line on stderr.
HARMLESS_LOG_LINES = {"bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community"}
for _logger, _start in HARMLESS_LOG_LINES.items():
    logging.getLogger(_logger).addFilter(lambda record, start=_start: not record.getMessage().startswith(start))


class _Parser(argparse.ArgumentParser):
    """An epilog given as a function is built only when help is shown: the generated key lists
    import every training method, which a command that just runs should not wait for."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def command_parser(prog: str, description: str,
                   epilog: str | Callable[[], str] | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with ``--debug``; ``epilog`` (generated key lists, or a function that
    returns them) keeps its layout."""
    parser = _Parser(prog=prog, description=description, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_option(parser)
    return parser


def add_debug_option(parser: argparse.ArgumentParser, subcommand: bool = False) -> None:
    """``--debug``; on a subcommand too, without its default overwriting the main parser's value."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if subcommand else False,
                        help="show the full traceback of any error (by default a user error is one line)")


def run_command(command: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
                argv: list[str] | None = None, failures: Iterable[type[BaseException]] = ()) -> int:
    """Parse ``argv``, call ``command(args)`` and return the exit status (``command``'s int, else 0)."""
    args = parser.parse_args(argv)
    try:
        apply_thread_policy()  # every command line computes with the one thread policy
        status = command(args)
    except Exception as error:
        if getattr(args, "debug", False):
            raise
        if is_user_error(error):
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
        if isinstance(error, tuple(failures)):
            print(f"error: {error}", file=sys.stderr)
            return 1
        raise
    return status if isinstance(status, int) else 0


def one_line(error: BaseException) -> str:
    """The error's message on one line; an ``OSError`` as ``<path>: <reason>``.

    >>> one_line(FileNotFoundError(2, "No such file or directory", "run.yaml"))
    'run.yaml: No such file or directory'
    >>> one_line(ValueError("data/x.png: corrupt image\\n(re-export it as PNG)"))
    'data/x.png: corrupt image (re-export it as PNG)'
    """
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping in a YAML or JSON config file (``1e-4`` read as a float); an empty file is ``{}``."""
    import yaml

    from lora_core.config import load_yaml

    try:
        values = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML or JSON ({one_line(error)})") from error
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not a text file ({error.reason} at byte {error.start})") from error
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got a {type(values).__name__}")
    return values
