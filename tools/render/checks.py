"""What every renderer checks: its input within the limits, and a program that ran and wrote
a file; a failure is a `RenderError` (or `ProgramFailed`) told with the program's last word."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from img2music.tools.programs import ProgramFailed, ProgramResult

logger = logging.getLogger(__name__)


class RenderError(RuntimeError):
    """A renderer ran but its result is unusable, or something it needs is missing."""


def check_size(what: str, size: int, limit: int) -> None:
    """An input over its limit is refused before any program reads it."""
    if size > limit:
        raise RenderError(f"the {what} is {size:,} bytes, over the {limit:,}-byte limit")


def check_ran(
    program: str, result: ProgramResult, output: Path, *, tolerated_status: int = 0
) -> None:
    """A failed exit or a missing or empty output file is a failure, told with its last word."""
    said = last_word(result)
    if result.returncode == tolerated_status != 0:
        logger.warning("%s reported errors: %s", program, said)
    elif result.returncode != 0:
        how = (f"was killed by signal {-result.returncode}" if result.returncode < 0
               else f"exited with status {result.returncode}")
        raise ProgramFailed(f"{program} {how}" + (f": {said}" if said else ""))
    if not output.is_file() or output.stat().st_size == 0:
        raise RenderError(f"{program} wrote no {output.suffix[1:].upper()} file"
                          + (f": {said}" if said else ""))


def last_word(result: ProgramResult) -> str:
    """The last error line a program wrote, or else its last line."""
    lines = [line.strip() for line in (result.stdout + "\n" + result.stderr).splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.search(r"error|fail", line, re.I)]
    return (errors or lines or [""])[-1][:200]
