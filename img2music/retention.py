"""Run folders do not pile up: the ones img2music keeps for itself are deleted by age and size.

`img2music serve` and `img2music compose` without `--out` keep their runs in
`IMG2MUSIC_DATA_DIR/runs`; a folder there older than `runs_max_age_days` is deleted, and when all
of them take more than `runs_max_bytes`, the oldest finished ones (with their `report.json`) go
until they fit. Folders in use (a run still going, the batch being written) are never touched,
and nothing outside that folder is.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from img2music.settings import Settings

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class RunFolder:
    path: Path
    modified: float  # the newest change to the folder or a file in it
    size: int
    finished: bool  # its run wrote its report


@dataclass
class Pruned:
    """What a pass deleted, and what stays."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept_bytes: int = 0


def runs_root(settings: Settings) -> Path:
    """The folder whose runs img2music itself keeps, and so may delete."""
    return settings.data_dir / "runs"


def prune_runs(root: Path, settings: Settings, *, keep: Collection[Path] = (),
               now: float | None = None) -> Pruned:
    """Delete run folders under `root` past the age limit, then the oldest while the rest take
    more than the size limit; `keep` are folders in use."""
    pruned = Pruned()
    if not root.is_dir():
        return pruned
    now = time.time() if now is None else now
    protected = {path.resolve() for path in keep}
    folders = sorted((folder for folder in map(_measure, root.iterdir()) if folder is not None),
                     key=lambda folder: folder.modified)
    total = sum(folder.size for folder in folders)
    oldest_kept = now - settings.runs_max_age_days * SECONDS_PER_DAY
    for folder in folders:
        if folder.path.resolve() in protected:
            continue
        if folder.modified < oldest_kept or (folder.finished
                                             and total > settings.runs_max_bytes):
            shutil.rmtree(folder.path, ignore_errors=True)
            total -= folder.size
            pruned.removed.append(folder.path.name)
            pruned.freed_bytes += folder.size
    pruned.kept_bytes = total
    if pruned.removed:
        logger.info("deleted %d old run folder(s) from %s, %d bytes", len(pruned.removed), root,
                    pruned.freed_bytes)
    return pruned


def _measure(path: Path) -> RunFolder | None:
    """A run folder's age and size; None for anything that is not a real folder."""
    try:
        if path.is_symlink() or not path.is_dir():
            return None
        modified, size = path.stat().st_mtime, 0
        for item in path.rglob("*"):
            status = item.lstat()
            modified, size = max(modified, status.st_mtime), size + status.st_size
    except OSError:  # deleted while we looked: nothing to do
        return None
    return RunFolder(path=path, modified=modified, size=size,
                     finished=(path / "report.json").is_file())
