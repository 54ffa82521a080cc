"""Running external programs on untrusted input: no shell, a timeout, bounded output."""

from __future__ import annotations

import logging
import math
import os
import resource
import select
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_CAPTURED_BYTES = 1_048_576
MAX_POLL_MS = 2**31 - 1  # poll(2) takes a C int of milliseconds: about 24 days

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
        process = subprocess.Popen(  # noqa: S603 - fixed program, no shell, arguments as a list
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=None if limiter else lambda: _limit_file_size(max_file_bytes),
        )
        try:
            returncode = _wait(process, timeout_s)
        except subprocess.TimeoutExpired as error:
            raise ProgramFailed(f"{args[0]} did not finish within {timeout_s:g} s") from error
        finally:
            if process.returncode is None:  # timed out or interrupted: it must not live on
                process.kill()
                process.wait()
    result = ProgramResult(
        returncode=returncode,
        stdout=_read_head(stdout_path),
        stderr=_read_head(stderr_path),
    )
    logger.debug("%s exited %d", args[0], result.returncode)
    return result


def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The program's exit status, the moment it exits.

    `Popen.wait(timeout)` polls with sleeps that double (0.5 ms, 1 ms, 2 ms...), and so oversleeps
    a program that ends in 1.5 ms (abc2midi on a tune) by as much again; Linux's pidfd becomes
    readable when the program exits, with no polling. Elsewhere (or on a kernel without pidfd)
    `Popen.wait` does the waiting.
    """
    if sys.platform != "linux":
        return process.wait(timeout_s)
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # a kernel older than 5.3, or a sandbox that forbids the call
        return process.wait(timeout_s)
    try:
        exits = select.poll()
        exits.register(pidfd, select.POLLIN)
        if not exits.poll(min(math.ceil(timeout_s * 1000), MAX_POLL_MS)):
            raise subprocess.TimeoutExpired(process.args, timeout_s)
    finally:
        os.close(pidfd)
    return process.wait()


def _read_head(path: Path) -> str:
    with path.open("rb") as handle:
        return handle.read(MAX_CAPTURED_BYTES).decode("utf-8", errors="replace")
