"""The suite's own rules (tests/conftest.py) hold: CI cannot pass by skipping, and no test sees
the developer's settings, another test's data or a settings file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from img2music.settings import Settings, get_settings

CONFTEST = Path(__file__).with_name("conftest.py")
SKIPPING = {
    "test_some": """
import pytest

def test_passes():
    pass

def test_skips_itself():
    pytest.skip("abc2midi is not installed: apt-get install abcmidi")

@pytest.mark.skipif(True, reason="no chromium: apt-get install chromium")
def test_marked_to_skip():
    pass

@pytest.mark.xfail(reason="a known bug")
def test_expected_to_fail():
    assert False
""",
    "test_whole_module": """
import pytest

pytest.skip("langgraph-cli is missing", allow_module_level=True)
""",
}


@pytest.fixture
def skipping_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(**SKIPPING)
    return pytester


def test_under_ci_every_skip_and_xfail_fails_with_its_reason(
    skipping_suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = skipping_suite.runpytest_subprocess("-p", "no:cacheprovider", "-ra",
                                                 "--continue-on-collection-errors")
    # A marked skip happens while setting up, so it shows as an error; either is red.
    result.assert_outcomes(passed=1, failed=2, errors=2)
    assert result.ret != 0
    result.stdout.fnmatch_lines_random([
        "*CI=true: a skip is a failure here (abc2midi is not installed: apt-get install abcmidi)*",
        "*CI=true: a skip is a failure here (no chromium: apt-get install chromium)*",
        "*CI=true: a xfail is a failure here (a known bug)*",
        "*CI=true: a module skip is a failure here (langgraph-cli is missing)*",
    ])


def test_outside_ci_a_skip_says_what_to_install(
    skipping_suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = skipping_suite.runpytest_subprocess("-p", "no:cacheprovider", "-ra")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines_random(["*abc2midi is not installed: apt-get install abcmidi*"])


def test_each_test_has_its_own_data_folder_and_no_settings_from_outside(tmp_path: Path) -> None:
    assert Path.cwd() == tmp_path
    assert {name for name in os.environ if name.startswith("IMG2MUSIC_")} == {
        "IMG2MUSIC_DATA_DIR"}
    assert get_settings().data_dir == tmp_path / "data"
    (tmp_path / ".env").write_text("IMG2MUSIC_RAG_K=9\n", encoding="utf-8")
    assert Settings().rag_k == Settings.model_fields["rag_k"].default == 4  # .env ignored
