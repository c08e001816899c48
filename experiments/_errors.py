"""The one error path of every ``tfda`` command.

A user error (a bad option, key, file or device) ends as ONE line on stderr,
``tfda CMD: error: <what> ...``, naming the option, key or file, and exit status
2; never a traceback. ``--debug`` anywhere on the command line, or
``TFDA_DEBUG=1``, lets the exception (and its traceback) through instead. An
unexpected exception (a bug) is one line too, with exit status 1 and a pointer
to ``--debug``.

Commands use :class:`ArgumentParser` (argparse whose errors raise
:class:`UserError` rather than printing the usage and exiting) and wrap their
``main`` with :func:`command`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

DEBUG_FLAG = "--debug"


class UserError(ValueError):
    """Bad input the user can fix; the message names the option, key or file."""


# Exceptions that mean "the input is wrong" rather than "the code is wrong": the
# library validates with ValueError, and files fail with OSError subclasses.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad option raises UserError naming it."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("TFDA_DEBUG", "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (torch and netCDF messages span several)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text or type(exc).__name__


def out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed (CPU or GPU): the sizes asked for are the user's to
    change, so it is reported as bad input, with torch's message naming the size."""
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text
                                              or "out of memory" in text.lower())


def report(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as the command's one error line; return the exit status."""
    if out_of_memory(exc):
        size = one_line(exc) or "an allocation failed"
        print(f"{prog}: error: out of memory: {size} (use smaller sizes: members, grid, "
              "steps)", file=sys.stderr)
        return 2
    if isinstance(exc, USER_ERRORS):
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)} "
          f"(run with {DEBUG_FLAG} or TFDA_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1


def command(prog: str) -> Callable[[Callable[[list[str]], int | None]],
                                   Callable[[list[str] | None], int]]:
    """Decorate ``main(argv) -> int`` so every error takes the one error path."""

    def wrap(main: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = debug_requested(argv)
            argv = [a for a in argv if a != DEBUG_FLAG]
            try:
                return int(main(argv) or 0)
            except SystemExit as exc:  # --help, or a library calling sys.exit
                if isinstance(exc.code, str):
                    print(f"{prog}: error: {exc.code}", file=sys.stderr)
                    return 2
                return int(exc.code or 0)
            except Exception as exc:  # noqa: BLE001 - the one place errors are reported
                if debug:
                    raise
                return report(prog, exc)

        return run

    return wrap


def description(doc: str | None) -> str:
    """A module docstring's first paragraph as one line, for ``--help``."""
    return " ".join((doc or "").split("\n\n")[0].split())
