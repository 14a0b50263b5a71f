"""What every command-line entry point shares: option types that refuse bad values while parsing, and one place that
turns expected failures into a single `error: ...` line with exit code 2 (argparse's own code for a usage error).

Expected failures are `ValueError` (a bad value, a wrong model type, a damaged file) and `OSError` (a missing or
occupied file or folder, an unreachable or refusing Hub: huggingface_hub's errors are `OSError`s). They name the thing
and the value at fault, so a traceback would only hide the message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

EXPECTED_ERRORS = (ValueError, OSError)
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def program_name(module: str) -> str:
    """How the user called a command, for its usage line: the installed script's name (`nextlocllm-predict`) or
    `python -m nextlocllm_hf.predict`."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("nextlocllm-") else f"python -m {module}"


def entry_point(main: Callable[[Sequence[str] | None], object]) -> Callable[[Sequence[str] | None], int]:
    """Wrap `main(argv)` as a command: its exit code (0 unless it returns an int), 2 with `error: ...` on stderr for
    an expected failure, 130 on Ctrl-C (with what the command says about resuming). Option errors still exit through
    argparse (usage, then the error, code 2)."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            result = main(argv)
        except KeyboardInterrupt as interrupt:  # a command may say how to go on, as the interrupt's message
            print(f"interrupted: {interrupt}" if str(interrupt) else "interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT_CODE
        except EXPECTED_ERRORS as error:
            print(f"error: {describe(error)}", file=sys.stderr)
            return 2
        return result if isinstance(result, int) and not isinstance(result, bool) else 0

    return run


def describe(error: BaseException) -> str:
    """The error's message on one line (some libraries write several)."""
    text = str(error) if str(error) else type(error).__name__
    if isinstance(error, OSError) and error.strerror:  # "[Errno 2] No such file or directory: 'x'" reads worse
        text = error.strerror if error.filename is None else f"{error.filename}: {error.strerror}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _number(kind: type, text: str, check: Callable[[float], bool], expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value) or not check(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(float, text, lambda v: v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, lambda v: v >= 0, "a finite number >= 0")


def open_fraction(text: str) -> float:
    return _number(float, text, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
