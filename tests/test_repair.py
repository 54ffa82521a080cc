"""Safe repairs: the fixes a model needs no second call for, and nothing more; each keeps every
note the writer meant."""

from __future__ import annotations

import pytest

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
    faulty = "X:1\nT:Calm\nM:3/4\nL:1/8\nK:G\nD2 | G2 B2 d2 e | e2 d2 B2 | A6 |]\n"
    result = repair_abc(faulty)
    assert result.abc == faulty
    assert check_abc(result.abc).fault_count == 1  # the long bar is the composer's to fix


def test_crlf_and_lyrics_after_the_music_are_kept() -> None:
    tune = ("X:1\nT:Calm\nM:3/4\nL:1/8\nK:G\n" + BODY + "w: la la la\n").replace("\n", "\r\n")
    result = repair_abc(tune)
    assert result.abc.endswith("A6 |]\nw: la la la\n")
    assert result.fixes == ["converted CR/CRLF line ends to LF"]


def test_header_fields_run_together_are_split_and_a_bare_key_is_not_guessed() -> None:
    result = repair_abc("X:163928 L:1/8 M:4/4 K\n|: E2 | A3 B cBcA | BAAB cBAG |]\n")
    assert result.abc.startswith("X:163928\nL:1/8\nM:4/4\nK:\n|: E2 |")
    assert result.fixes == ["split the header line 'X:163928 L:1/8 M:4/4 K' into one field per "
                            "line"]
    check = check_abc(result.abc)
    assert not check.ok and check.errors[0].line == 4
    assert "K: names no key" in check.errors[0].message
    title = "X:1\nT:Song in C: a tale\nM:2/4\nL:1/8\nK:C\n" + BODY
    assert repair_abc(title).abc == title  # a title with a colon is one field


@pytest.mark.parametrize(("key", "plain"), [
    ("K: G major", "K:G"), ("K:Gmaj", "K:G"), ("K:A minor", "K:Am"), ("K:Emin", "K:Em"),
    ("K:B flat major", "K:Bb"), ("K:F# Minor", "K:F#m"), ("K:C Pentatonic", "K:C"),
    ("K:D minor clef=bass", "K:Dm clef=bass"),
])
def test_keys_spelled_out_get_their_abc_name(key: str, plain: str) -> None:
    result = repair_abc(f"X:1\nT:Calm\nM:3/4\nL:1/8\n{key}\n" + BODY)
    assert f"\n{plain}\n" in result.abc
    assert result.fixes == [f"wrote {key} as {plain}"]
    assert check_abc(result.abc).clean


@pytest.mark.parametrize("key", ["K:D dorian", "K:Am", "K:none", "K:Q", "K:"])
def test_keys_in_abc_form_or_unknown_are_left_alone(key: str) -> None:
    tune = f"X:1\nT:Calm\nM:3/4\nL:1/8\n{key}\n" + BODY
    assert repair_abc(tune).abc == tune


def test_letter_sharps_become_abc_sharps_and_later_notes_in_the_bar_keep_their_pitch() -> None:
    tune = ('X:1\nT:Sharp\nM:4/4\nL:1/4\nK:C\n"F#m" F# G F C# | [F#A] c# F2 |\n'
            "%  F# in a comment\nw: F# in the words\n")
    result = repair_abc(tune)
    assert '"F#m" ^F G =F ^C | [^FA] ^c =F2 |' in result.abc
    assert "%  F# in a comment" in result.abc and "w: F# in the words" in result.abc
    assert result.fixes == [
        "wrote 4 letter accidental(s) the ABC way, before the note: F# → ^F, C# → ^C, c# → ^c",
        "marked 2 later note(s) with the key's accidental, since an ABC accidental lasts to the "
        "bar line",
    ]
    assert check_abc(result.abc).clean


def test_a_sharp_the_key_already_has_needs_no_natural_after_it() -> None:
    result = repair_abc("X:1\nT:In G\nM:4/4\nL:1/4\nK:G\nF# G F A |]\n")
    assert "\n^F G F A |]\n" in result.abc


def test_letter_flats_are_read_as_flats_only_when_that_is_plainly_meant() -> None:
    with_sharps = repair_abc("X:1\nT:f\nM:4/4\nL:1/4\nK:C\nBb C# D Eb |]\n")
    assert "\n_B ^C D _E |]\n" in with_sharps.abc
    bars_fit = repair_abc("X:1\nT:f\nM:4/4\nL:1/8\nK:C\nBb2 C2 D2 Eb2 | F8 |]\n")
    assert "\n_B2 C2 D2 _E2 | F8 |]\n" in bars_fit.abc
    abc_notes = "X:1\nT:f\nM:4/4\nL:1/8\nK:C\nBb C2 D2 Eb2 | F8 |]\n"  # B then b: 8/8
    assert repair_abc(abc_notes).abc == abc_notes


CUT = "X:1\nT:Cut\nM:4/4\nL:1/8\nK:D\nD2 F2 A2 d2 | c2 B2 A4 | B2 A2 F"


def test_a_tune_cut_off_mid_bar_loses_only_its_incomplete_bar() -> None:
    result = repair_abc(CUT, cut_off=True)
    assert result.abc.endswith("\nD2 F2 A2 d2 | c2 B2 A4 |\n")
    assert result.fixes == ["the tune was cut off mid-bar; dropped its incomplete last bar "
                            "'B2 A2 F'"]
    assert check_abc(result.abc).clean
    assert repair_abc(CUT).abc == CUT + "\n"  # not known to be cut: nothing is dropped
    full = CUT + "2 E2"
    assert repair_abc(full, cut_off=True).abc == full + "\n"  # the last bar is whole


def test_a_tune_that_ends_inside_a_chord_was_cut_off() -> None:
    result = repair_abc(CUT.replace("B2 A2 F", "B2 A2 [FA"))
    assert result.abc.endswith("| c2 B2 A4 |\n")
    assert check_abc(result.abc).clean
