"""External programs run with no shell, a timeout, and bounded output, whatever they try."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from img2music.tools.programs import (
    MAX_CAPTURED_BYTES,
    ProgramFailed,
    ProgramMissing,
    run_program,
)


def test_missing_program_names_its_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    expected = r"abc2midi is not installed \(Debian package: abcmidi\)"
    with pytest.raises(ProgramMissing, match=expected):
        run_program(["abc2midi", "x.abc"], cwd=tmp_path, timeout_s=5, max_file_bytes=1_000)


def test_unknown_program_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ProgramMissing, match="no-such-program-img2music is not installed"):
        run_program(["no-such-program-img2music"], cwd=tmp_path, timeout_s=5, max_file_bytes=1_000)


@pytest.fixture(params=["pidfd", "no pidfd"])
def exit_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of waiting for a program: Linux's pidfd, and `Popen.wait` where there is none."""
    if request.param == "no pidfd":
        def unavailable(pid: int) -> int:
            raise OSError(errno.ENOSYS, "pidfd_open is not implemented")

        monkeypatch.setattr(os, "pidfd_open", unavailable, raising=False)
    return str(request.param)


def test_timeout_stops_the_program(tmp_path: Path, exit_watch: str) -> None:
    with pytest.raises(ProgramFailed, match=r"sleep did not finish within 0\.3 s"):
        run_program(["sleep", "10"], cwd=tmp_path, timeout_s=0.3, max_file_bytes=1_000)


def test_a_program_that_hangs_is_killed_and_reaped(tmp_path: Path, exit_watch: str) -> None:
    with pytest.raises(ProgramFailed, match="did not finish"):
        run_program(["sh", "-c", "echo $$ > pid; exec sleep 30"], cwd=tmp_path, timeout_s=0.5,
                    max_file_bytes=1_000)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # not running, and not left a zombie either
        os.kill(pid, 0)


@pytest.mark.parametrize(("program", "status"), [("true", 0), ("false", 1)])
@pytest.mark.parametrize("timeout_s", [5, 1e10], ids=["seconds", "centuries"])
def test_the_exit_status_is_the_programs(
    tmp_path: Path, exit_watch: str, program: str, status: int, timeout_s: float
) -> None:
    result = run_program([program], cwd=tmp_path, timeout_s=timeout_s, max_file_bytes=1_000)
    assert result.returncode == status


def test_files_it_writes_are_capped(tmp_path: Path) -> None:
    result = run_program(["dd", "if=/dev/zero", "of=big.bin", "bs=1024", "count=4096"],
                         cwd=tmp_path, timeout_s=30, max_file_bytes=1_048_576)
    assert result.returncode != 0
    assert (tmp_path / "big.bin").stat().st_size <= 1_048_576


def test_arguments_never_reach_a_shell(tmp_path: Path) -> None:
    result = run_program(["echo", "$(touch pwned); `touch pwned2` | cat"], cwd=tmp_path,
                         timeout_s=5, max_file_bytes=1_000)
    assert result.stdout.strip() == "$(touch pwned); `touch pwned2` | cat"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_captured_output_is_bounded(tmp_path: Path) -> None:
    result = run_program(["head", "-c", "3000000", "/dev/zero"], cwd=tmp_path, timeout_s=30,
                         max_file_bytes=10_000_000)
    assert len(result.stdout) == MAX_CAPTURED_BYTES
