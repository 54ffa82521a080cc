"""Running external programs on untrusted input: no shell, a timeout, bounded output."""

from __future__ import annotations

import logging
import resource
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_CAPTURED_BYTES = 1_048_576

DEBIAN_PACKAGES = {
    "abc2midi": "abcmidi",
    "midi2abc": "abcmidi",
    "abcm2ps": "abcm2ps",
    "fluidsynth": "fluidsynth",
    "sox": "sox",
}


class ProgramMissing(RuntimeError):
    """An external program is not installed; the message says which package brings it."""

    def __init__(self, program: str) -> None:
        package = DEBIAN_PACKAGES.get(program, program)
        super().__init__(f"{program} is not installed (Debian package: {package})")
        self.program = program


class ProgramFailed(RuntimeError):
    """An external program timed out or exited with an error."""


@dataclass(frozen=True)
class ProgramResult:
    returncode: int
    stdout: str
    stderr: str


def which(program: str) -> str | None:
    return shutil.which(program)


def _limit_file_size(max_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def run_program(
    args: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    max_file_bytes: int,
) -> ProgramResult:
    """Run `args` in `cwd` with no shell and no stdin, capping the files it writes.

    Output is captured into files in `cwd` (so a chatty program cannot fill memory) and only its
    first `MAX_CAPTURED_BYTES` are read back. util-linux's `prlimit` sets the file-size limit:
    a `preexec_fn` would force Python to fork the whole interpreter, ten times slower.
    """
    executable = which(args[0])
    if executable is None:
        raise ProgramMissing(args[0])
    command = [executable, *args[1:]]
    limiter = which("prlimit")
    if limiter is not None:
        command = [limiter, f"--fsize={max_file_bytes}", "--", *command]
    stdout_path, stderr_path = cwd / ".stdout", cwd / ".stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        try:
            completed = subprocess.run(  # noqa: S603 - fixed program, no shell, arguments as a list
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                timeout=timeout_s,
                check=False,
                preexec_fn=None if limiter else lambda: _limit_file_size(max_file_bytes),
            )
        except subprocess.TimeoutExpired as error:
            raise ProgramFailed(f"{args[0]} did not finish within {timeout_s:g} s") from error
    result = ProgramResult(
        returncode=completed.returncode,
        stdout=_read_head(stdout_path),
        stderr=_read_head(stderr_path),
    )
    logger.debug("%s exited %d", args[0], result.returncode)
    return result


def _read_head(path: Path) -> str:
    with path.open("rb") as handle:
        return handle.read(MAX_CAPTURED_BYTES).decode("utf-8", errors="replace")
