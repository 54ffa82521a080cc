"""External programs run with no shell, a timeout, and bounded output, whatever they try."""

from __future__ import annotations

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


def test_timeout_stops_the_program(tmp_path: Path) -> None:
    with pytest.raises(ProgramFailed, match=r"sleep did not finish within 0\.3 s"):
        run_program(["sleep", "10"], cwd=tmp_path, timeout_s=0.3, max_file_bytes=1_000)


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
