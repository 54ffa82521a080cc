"""Safe repairs: the fixes a model needs no second call for, and nothing more."""

from __future__ import annotations

from img2music.tools.check import check_abc
from img2music.tools.repair import repair_abc

BODY = "D2 | G2 B2 d2 | e2 d2 B2 | A6 |]\n"


def test_valid_tune_is_left_alone() -> None:
    tune = "X:1\nT:Calm\nM:3/4\nL:1/8\nK:G\n" + BODY
    result = repair_abc(tune)
    assert result.abc == tune
    assert result.fixes == [] and result.notes == []


def test_missing_x_and_fields_after_k_are_fixed_and_reported() -> None:
    tune = "T:Calm\nK:G\nM:3/4\nL:1/8\n" + BODY
    assert not check_abc(tune).ok
    result = repair_abc(tune)
    assert result.abc == "X:1\nT:Calm\nM:3/4\nL:1/8\nK:G\n" + BODY
    assert result.fixes == [
        "added X:1, which must be the first line of a tune",
        "moved M:3/4 above K:, which must end the header",
        "moved L:1/8 above K:, which must end the header",
    ]
    assert check_abc(result.abc).ok


def test_x_moved_to_the_top() -> None:
    result = repair_abc("T:Calm\nX:7\nM:3/4\nL:1/8\nK:G\n" + BODY)
    assert result.abc.startswith("X:7\nT:Calm\n")
    assert result.fixes == ["moved X: to the first line, where it must be"]


def test_trailing_chat_and_blank_lines_inside_are_removed() -> None:
    tune = (
        "Here is the tune:\n\nX:1\nT:Calm\nM:3/4\nL:1/8\nK:G\nD2 | G2 B2 d2 |\n\ne2 d2 B2 | A6 |]"
        " I hope you like it!\nThis melody rises like the morning sun.\n"
    )
    result = repair_abc(tune)
    assert result.abc == "X:1\nT:Calm\nM:3/4\nL:1/8\nK:G\nD2 | G2 B2 d2 |\ne2 d2 B2 | A6 |]\n"
    assert result.fixes == [
        "removed 2 line(s) of text before the tune",
        "removed 1 blank line(s) inside the tune (a blank line ends it)",
        "removed 1 line(s) of text after the last bar",
        "removed text after the last bar line: 'I hope you like it!'",
    ]
    assert check_abc(result.abc).ok


def test_missing_key_is_not_guessed() -> None:
    tune = "X:1\nT:Calm\nM:3/4\nL:1/8\n" + BODY
    result = repair_abc(tune)
    assert result.abc == tune
    assert "not guessed" in result.notes[0]
    assert not check_abc(result.abc).ok


def test_notes_are_never_changed() -> None:
    broken = "X:1\nT:Calm\nM:3/4\nL:1/8\nK:G\nD2 | G2 B2 d2 e | e2 d2 B2 | A6 |]\n"
    result = repair_abc(broken)
    assert result.abc == broken
    assert not check_abc(result.abc).ok


def test_crlf_and_lyrics_after_the_music_are_kept() -> None:
    tune = ("X:1\nT:Calm\nM:3/4\nL:1/8\nK:G\n" + BODY + "w: la la la\n").replace("\n", "\r\n")
    result = repair_abc(tune)
    assert result.abc.endswith("A6 |]\nw: la la la\n")
    assert result.fixes == ["converted CR/CRLF line ends to LF"]
