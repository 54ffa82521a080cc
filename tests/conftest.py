"""The suite's ground rules: every test is hermetic, and under CI nothing may skip.

Hermetic: the developer's `IMG2MUSIC_*` variables and `.env` file never reach a test (nor the
programs it starts); each test starts with fresh settings, a data folder of its own and its own
working directory, and no cached object built from another test's settings.

Under CI (`CI=true`, as `.ci/run` sets it) a skipped or xfailed test, or a test module that
skips itself, is reported as a failure with its reason: a program or package the suite needs
that is missing turns CI red instead of quietly testing less. Locally a skip says what to
install (see `tests/needs.py`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from img2music.settings import Settings, get_settings

pytest_plugins = ["pytester"]  # tests/test_suite_rules.py runs small suites under these rules

PREFIX = "IMG2MUSIC_"
CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
_saved: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported: no developer settings, no `.env`."""
    _saved["environment"] = {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}
    for name in _saved["environment"]:
        del os.environ[name]
    _saved["env_file"] = Settings.model_config.get("env_file")
    Settings.model_config["env_file"] = None
    # Tests move to temporary working directories; programs they start must still find the code.
    python_path = os.environ.get("PYTHONPATH")
    if python_path:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            str(Path(entry).resolve()) for entry in python_path.split(os.pathsep) if entry)
    get_settings.cache_clear()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One worker per core: a worker's torch, and the programs it starts, use one thread
        # each, so two workers do not fight over the same cores (read when torch loads).
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    if "env_file" in _saved:
        Settings.model_config["env_file"] = _saved["env_file"]
    os.environ.update(_saved.get("environment", {}))


def _clear_settings_caches() -> None:
    """Settings and what the process built from them once (the default retriever)."""
    get_settings.cache_clear()
    nodes = sys.modules.get("img2music.graph.nodes")
    if nodes is not None:
        nodes._RETRIEVERS.clear()


@pytest.fixture(scope="session", autouse=True)
def _session_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Shared (module) fixtures start outside the checkout too, where no `.env` lies."""
    before = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No IMG2MUSIC_* setting but a fresh data folder; the test's folder as working directory."""
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(f"{PREFIX}DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    _clear_settings_caches()
    yield
    _clear_settings_caches()


def _ci_failure(what: str, reason: str) -> str:
    return f"CI=true: a {what} is a failure here ({reason.strip()})"


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if CI and hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = _ci_failure("xfail", str(report.wasxfail) or "no reason given")
    elif CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = _ci_failure("skip", _skip_reason(report.longrepr))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = _ci_failure("module skip", _skip_reason(report.longrepr))
    return report
