"""What a test needs from the machine, as skip markers that say what to install (test support).

Locally a missing program skips the tests that need it, with the install command in the reason;
under CI (`CI=true`) `tests/conftest.py` turns every skip into a failure, so a broken install
step turns CI red instead of quietly testing less.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from img2music.settings import Settings
from img2music.tools.programs import DEBIAN_PACKAGES

INSTALL = "scripts/install.sh installs it"
CHROMIUM = Path("/usr/bin/chromium")
LANGGRAPH = Path(sys.executable).with_name("langgraph")


def needs_programs(*programs: str) -> pytest.MarkDecorator:
    """Skip unless every program is on PATH; the reason names the Debian packages."""
    missing = [program for program in programs if shutil.which(program) is None]
    packages = sorted({DEBIAN_PACKAGES.get(program, program) for program in missing})
    return pytest.mark.skipif(
        bool(missing),
        reason=f"{' and '.join(missing)} not installed: apt-get install "
        f"{' '.join(packages)}; {INSTALL}",
    )


needs_soundfont = pytest.mark.skipif(
    Settings().find_soundfont() is None,
    reason="no General MIDI SoundFont: apt-get install timgm6mb-soundfont, or set "
    f"IMG2MUSIC_SOUNDFONT; {INSTALL}",
)
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium; "
    f"{INSTALL} (Playwright's own browser download is not used)",
)
needs_langgraph_cli = pytest.mark.skipif(
    not LANGGRAPH.exists() and shutil.which("langgraph") is None,
    reason="langgraph-cli[inmem] is not installed: pip install -e '.[dev]'; scripts/install.sh "
    "installs it",
)
