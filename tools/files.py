"""Writing result files atomically: a reader, or a crash, never meets half a file.

Every result img2music writes (reports, tunes, audio, scores, images, evaluation tables) is
written to a temporary file beside its final name, flushed to disk, and renamed over it: a
rename within one folder is atomic, so the final name holds the old file or the new one, whole.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside `path` (same suffix, for writers that read it) to write in;
    renamed onto `path` when the block ends without an error, removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{secrets.token_hex(6)}.{path.name}")
    try:
        yield temporary
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically."""
    with replacing(path) as temporary, temporary.open("xb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def move_atomic(source: Path, path: Path) -> Path:
    """Put the file `source` (e.g. in a program's temporary folder) at `path` atomically, even
    across file systems, where a plain move is a copy that readers could see half done."""
    with replacing(path) as temporary:
        shutil.copyfile(source, temporary)
    source.unlink()
    return path
