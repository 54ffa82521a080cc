"""Extraction from model outputs written the way Keye, Qwen and chat models actually answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from music21 import corpus

from img2music.tools.extract import extract_abc


def assert_prose_only(motivation: str, abc: str) -> None:
    for line in abc.splitlines():
        assert line not in motivation, f"ABC line {line!r} leaked into the motivation"
    assert "```" not in motivation
    assert "~~~" not in motivation


KEYE_ANSWER = """<think>
The image shows a misty lake at dawn with pale pink light over the hills.
A slow 3/4 in D major would suit the calm. Let me sketch something first:
X:1
T:Draft
M:3/4
L:1/8
K:D
D2 F2 A2 | d4 c2 |
Hmm, that is too plain. I should add a second phrase and end on the tonic.
</think>

```abc
X:1
T:Misty Lake at Dawn
C:img2music
M:3/4
L:1/8
Q:1/4=72
K:D
"D" D2 F2 A2 | "G" B4 A2 | "D" F2 A2 d2 | "A" c6 |
"Bm" B2 d2 f2 | "G" g4 f2 | "A" e2 c2 A2 | "D" d6 |]
```

The calm 3/4 pulse and the slow tempo echo the still water, while the melody rises like the
morning light over the hills before settling back on the tonic.
"""

KEYE_ABC = """X:1
T:Misty Lake at Dawn
C:img2music
M:3/4
L:1/8
Q:1/4=72
K:D
"D" D2 F2 A2 | "G" B4 A2 | "D" F2 A2 d2 | "A" c6 |
"Bm" B2 d2 f2 | "G" g4 f2 | "A" e2 c2 A2 | "D" d6 |]
"""


def test_keye_answer_takes_the_fenced_tune_not_the_draft_in_think() -> None:
    result = extract_abc(KEYE_ANSWER)
    assert result.abc == KEYE_ABC
    assert result.candidates == 1
    assert result.motivation == (
        "The calm 3/4 pulse and the slow tempo echo the still water, while the melody rises like"
        " the\nmorning light over the hills before settling back on the tonic."
    )
    assert "removed a <think> block" in result.notes
    assert "Draft" not in result.motivation and "misty lake" not in result.motivation


JIG_ABC = """X:3
T:Gulls over the Harbour
M:6/8
L:1/8
K:G
|: GAB d2 B | c2 A B2 G | FGA d2 c | BAG A3 |
GAB d2 B | c2 e d2 B | AGF GAF | G3 G3 :|
"""


@pytest.mark.parametrize(("opening", "closing"), [("```", "```"), ("~~~", "~~~"),
                                                   ("~~~abc", "~~~"), ("  ```ABC", "  ```")])
def test_fence_without_language_tag_or_with_tildes(opening: str, closing: str) -> None:
    text = (f"Here is a lively jig for the seaside picture:\n\n{opening}\n{JIG_ABC}{closing}\n\n"
            "I picked 6/8 because the waves roll in threes.\n")
    result = extract_abc(text)
    assert result.abc == JIG_ABC
    assert result.motivation == (
        "Here is a lively jig for the seaside picture:\n\n"
        "I picked 6/8 because the waves roll in threes."
    )


def test_bare_tune_between_paragraphs_keeps_music_after_a_blank_line() -> None:
    text = """The photo shows a quiet snowy forest, so I wrote a slow waltz in E minor.

X:1
T:Snowfall
M:3/4
L:1/4
K:Em
E G B | e2 d | B A G | F3 |   % the first flakes

G B d | e2 f | g f e | e3 |]

The falling thirds imitate flakes drifting down, and the minor key keeps the stillness of
winter.
"""
    result = extract_abc(text)
    assert result.abc == """X:1
T:Snowfall
M:3/4
L:1/4
K:Em
E G B | e2 d | B A G | F3 |   % the first flakes
G B d | e2 f | g f e | e3 |]
"""
    assert result.motivation.startswith("The photo shows a quiet snowy forest")
    assert result.motivation.endswith("keeps the stillness of\nwinter.")
    assert_prose_only(result.motivation, result.abc)


FIRST_TUNE = """X:1
T:Harbour Lights
M:4/4
L:1/8
K:C
C2 E2 G2 c2 | B2 G2 E4 | F2 A2 c2 f2 | e8 |]
"""

SECOND_TUNE = """X:2
T:Harbour Lights (revised)
M:4/4
L:1/8
K:C
"C" C2 E2 G2 c2 | "G" B2 d2 g4 | "F" a2 g2 f2 e2 | "C" c8 |]
"""


def test_two_tunes_takes_the_last_complete_one() -> None:
    text = (f"My first idea:\n\n```abc\n{FIRST_TUNE}```\n\nOn reflection the ending needs more"
            f" lift, so here is a better version:\n\n```abc\n{SECOND_TUNE}```\n\nThe revised"
            " tune climbs to a high A before it comes home, like the lights climbing the hill.")
    result = extract_abc(text)
    assert result.abc == SECOND_TUNE
    assert result.candidates == 2
    assert "found 2 tunes; took the last complete one" in result.notes
    assert "better version" in result.motivation and "climbing the hill" in result.motivation
    assert_prose_only(result.motivation, FIRST_TUNE + SECOND_TUNE)


def test_two_tunes_in_one_fence_split_at_x() -> None:
    result = extract_abc(f"```abc\n{FIRST_TUNE}{SECOND_TUNE}```\n")
    assert result.abc == SECOND_TUNE
    assert result.candidates == 2


@pytest.mark.parametrize("unfinished", [
    "X:2\nT:B part\nM:4/4\nL:1/8\n",
    "X:2\nT:B part\nM:4/4\nL:1/8\nK:C\n",
])
def test_incomplete_last_tune_falls_back_to_the_first(unfinished: str) -> None:
    text = (f"Here is the A part:\n\n```abc\n{FIRST_TUNE}```\n\nI could add a B part:\n\n```abc\n"
            f"{unfinished}```\n\nThe A part alone already carries the picture's calm.")
    result = extract_abc(text)
    assert result.abc == FIRST_TUNE
    assert result.candidates == 1
    assert any(note.startswith("skipped 1 incomplete tune") for note in result.notes)
    assert "B part:" in result.motivation and "T:B part" not in result.motivation


def test_unclosed_think_uses_the_only_tune_inside_it() -> None:
    text = """<think>
The sketch shows a small boat on a calm sea. Something gentle in F major, 6/8.
X:1
T:Little Boat
M:6/8
L:1/8
K:F
F2 A c2 A | B2 G A3 | F2 A c2 f | e2 g f3 |]
That works; now I should explain why the"""
    result = extract_abc(text)
    assert result.abc == """X:1
T:Little Boat
M:6/8
L:1/8
K:F
F2 A c2 A | B2 G A3 | F2 A c2 f | e2 g f3 |]
"""
    assert result.motivation == ""
    assert "a <think> block was never closed; took the rest of the text as reasoning" in (
        result.notes)
    assert "the only tune was inside the <think> block; took it from there" in result.notes


def test_lone_closing_think_drops_the_reasoning_before_it() -> None:
    text = """The painting is dark blue with a single yellow window; A dorian, perhaps.
X:1
K:Ador
A2 B2 c2 d2 | e8 |]
</think>

X:1
T:Night Window
M:4/4
L:1/8
K:Ador
A2 c2 e2 a2 | g2 e2 d2 B2 | A2 G2 E2 G2 | A8 |]

One warm window in a cold night: the dorian raised sixth gives the light its glow.
"""
    result = extract_abc(text)
    assert result.abc == """X:1
T:Night Window
M:4/4
L:1/8
K:Ador
A2 c2 e2 a2 | g2 e2 d2 B2 | A2 G2 E2 G2 | A8 |]
"""
    assert result.candidates == 1
    assert result.motivation == (
        "One warm window in a cold night: the dorian raised sixth gives the light its glow."
    )
    assert "dropped the text before a lone </think> as reasoning" in result.notes


def test_crlf_and_cr_line_ends() -> None:
    text = ("Here you go:\r\n\r\n```abc\r\n" + JIG_ABC.replace("\n", "\r\n")
            + "```\r\n\rThe waves roll in threes.\r\n")
    result = extract_abc(text)
    assert result.abc == JIG_ABC
    assert result.motivation == "Here you go:\n\nThe waves roll in threes."


def test_tune_without_x_but_with_header_and_key() -> None:
    text = """Sure! Here's the melody for the autumn park:

T:Autumn Leaves Falling
M:4/4
L:1/8
K:Am
A2 c2 e2 a2 | g2 e2 c2 A2 | F2 A2 c2 f2 | e8 |
d2 f2 a2 f2 | e2 c2 A2 E2 | F2 E2 D2 B,2 | A,8 |]

Each phrase falls like a leaf after it rises.
"""
    result = extract_abc(text)
    assert result.abc == """T:Autumn Leaves Falling
M:4/4
L:1/8
K:Am
A2 c2 e2 a2 | g2 e2 c2 A2 | F2 A2 c2 f2 | e8 |
d2 f2 a2 f2 | e2 c2 A2 E2 | F2 E2 D2 B,2 | A,8 |]
"""
    assert result.motivation == (
        "Sure! Here's the melody for the autumn park:\n\nEach phrase falls like a leaf after it"
        " rises."
    )


def test_voices_midi_directives_and_lyrics_stay_intact() -> None:
    text = """**Lantern Festival**

```abc
X:1
T:Lantern Festival
M:4/4
L:1/8
Q:1/4=96
%%score (S B)
K:D
V:S clef=treble name="Melody"
%%MIDI program 73
d2 f2 a2 f2 | e2 d2 B4 | A2 B2 d2 e2 | f8 |]
w: Lan-terns rise in-to the night, sky a-glow with gold

V:B clef=bass name="Bass"
%%MIDI program 32
D,4 A,,4 | G,,4 A,,4 | B,,4 G,,4 | D,8 |]
```

- The flute (program 73) carries the lanterns upward.
- The bass holds the ground, like the crowd below.
"""
    result = extract_abc(text)
    assert result.abc == """X:1
T:Lantern Festival
M:4/4
L:1/8
Q:1/4=96
%%score (S B)
K:D
V:S clef=treble name="Melody"
%%MIDI program 73
d2 f2 a2 f2 | e2 d2 B4 | A2 B2 d2 e2 | f8 |]
w: Lan-terns rise in-to the night, sky a-glow with gold
V:B clef=bass name="Bass"
%%MIDI program 32
D,4 A,,4 | G,,4 A,,4 | B,,4 G,,4 | D,8 |]
"""
    assert result.motivation == (
        "**Lantern Festival**\n\n- The flute (program 73) carries the lanterns upward.\n"
        "- The bass holds the ground, like the crowd below."
    )


def test_stray_markdown_around_a_bare_tune() -> None:
    text = """### Melody

**Title:** *Sunflower Field*

- Key: G major
- Metre: 2/4

X:1
T:Sunflower Field
M:2/4
L:1/8
K:G
G>A Bd | e2 d2 | c>B AG | A4 |
B>c dg | e2 d2 | c>A FA | G4 |]
### Why it fits

* The bouncy 2/4 matches the flowers nodding in the wind.
"""
    result = extract_abc(text)
    assert result.abc == """X:1
T:Sunflower Field
M:2/4
L:1/8
K:G
G>A Bd | e2 d2 | c>B AG | A4 |
B>c dg | e2 d2 | c>A FA | G4 |]
"""
    assert result.motivation.startswith("### Melody\n\n**Title:** *Sunflower Field*")
    assert result.motivation.endswith("### Why it fits\n\n* The bouncy 2/4 matches the flowers"
                                      " nodding in the wind.")


def test_no_tune_at_all() -> None:
    text = ("\n  I'm sorry, I can't compose music for this image.  \n\nIt shows a red bicycle "
            "leaning against a white wall.\n")
    result = extract_abc(text)
    assert result.abc is None
    assert result.candidates == 0
    assert result.notes == ["no ABC tune found"]
    assert result.motivation == ("I'm sorry, I can't compose music for this image.\n\n"
                                 "It shows a red bicycle leaning against a white wall.")


@pytest.mark.parametrize("label", ["Motivation: ", "**Motivation**: ", "**Motivation:** ",
                                   "## Motivation\n", "MOTIVATION:\n"])
def test_motivation_label_after_the_tune_is_removed(label: str) -> None:
    text = (f"I wrote a short fanfare for the mountain photo.\n\n```abc\n{FIRST_TUNE}```\n\n"
            f"{label}The leaps of a fifth mirror the jagged peaks.\n")
    result = extract_abc(text)
    assert result.abc == FIRST_TUNE
    assert result.motivation == ("I wrote a short fanfare for the mountain photo.\n\n"
                                 "The leaps of a fifth mirror the jagged peaks.")


def test_long_input_is_cut_at_max_chars() -> None:
    text = f"```abc\n{FIRST_TUNE}```\n\n" + "The sea goes on and on. " * 20_000
    result = extract_abc(text, max_chars=1_000)
    assert result.abc == FIRST_TUNE
    assert "input longer than 1000 characters was cut" in result.notes
    assert len(result.motivation) < 1_000


def test_cut_inside_the_last_tune_falls_back_to_the_first() -> None:
    head = f"```abc\n{FIRST_TUNE}```\n\nAnd a longer one:\n\n```abc\n{SECOND_TUNE}"
    text = head + "d2 e2 f2 g2 | " * 50_000
    result = extract_abc(text, max_chars=head.index('"C" C2'))
    assert result.abc == FIRST_TUNE
    assert result.candidates == 1


def test_a_music21_corpus_tune_round_trips_through_prose_and_a_fence() -> None:
    source = Path(str(corpus.getWork("essenFolksong/altdeu10.abc")))
    lines = source.read_text(encoding="latin-1").splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith("X:")]
    tune_lines = lines[starts[0]:starts[1]]
    while not tune_lines[-1].strip():
        tune_lines.pop()
    tune = "\n".join(tune_lines) + "\n"
    text = (f"The woodcut shows an old warrior, so I chose a German ballad.\n\n```abc\n{tune}```\n"
            "\nIts 4/2 breadth suits the epic subject.")
    result = extract_abc(text)
    assert result.abc == tune
    assert result.candidates == 1
    assert result.motivation == ("The woodcut shows an old warrior, so I chose a German ballad."
                                 "\n\nIts 4/2 breadth suits the epic subject.")


def test_a_tune_inside_a_json_string_value() -> None:
    text = ('{"title": "Harbour Lights", "style": "A slow swaying line over a steady bass.",\n'
            ' "abc": ' + json.dumps(FIRST_TUNE) + "}")
    result = extract_abc(text)
    assert result.abc == FIRST_TUNE
    assert result.motivation == "A slow swaying line over a steady bass."
    assert "read the tune from a JSON string" in result.notes
    assert not result.cut_off


def test_a_json_reply_cut_off_inside_the_tune() -> None:
    text = '{"style": "Bright and quick.", "abc": ' + json.dumps(FIRST_TUNE)[:-12]
    result = extract_abc(text)
    assert result.abc is not None and result.abc.startswith("X:1\nT:Harbour Lights")
    assert result.cut_off
    assert "read the tune from a JSON string cut off" in result.notes


@pytest.mark.parametrize("tags", [("<abc>", "</abc>"), ("<ABC>\n", "\n</ABC>")])
def test_a_tune_in_abc_tags(tags: tuple[str, str]) -> None:
    opening, closing = tags
    text = f"I wrote this for the harbour.{opening}{FIRST_TUNE}{closing}The end rises gently."
    result = extract_abc(text)
    assert result.abc == FIRST_TUNE
    assert result.motivation == "I wrote this for the harbour.\n\nThe end rises gently."


def test_a_fence_nested_in_a_markdown_fence() -> None:
    text = (f"```markdown\n# Harbour\n\nThe lights sway.\n\n```abc\n{FIRST_TUNE}```\n```\n")
    result = extract_abc(text)
    assert result.abc == FIRST_TUNE and not result.cut_off


def test_a_placeholder_block_is_never_the_tune() -> None:
    text = (f"A first version:\n\n```abc\n{FIRST_TUNE}```\n\nThe final output:\n\n"
            "```abc\n...  -- The actual ABC notation will be here.\n```\n")
    result = extract_abc(text)
    assert result.abc == FIRST_TUNE


@pytest.mark.parametrize("prose", ["这首曲子描绘了港口的灯光，缓慢而温暖。A小调。",
                                   "港の灯りを描いた曲です。Cのメロディ。"])
def test_prose_in_any_language_around_the_tune(prose: str) -> None:
    result = extract_abc(f"{prose}\n{FIRST_TUNE}{prose}\n")
    assert result.abc == FIRST_TUNE
    assert result.motivation == f"{prose}\n{prose}"


def test_a_reply_cut_off_inside_its_only_tune_is_taken_and_marked() -> None:
    cut = FIRST_TUNE[:-10]
    result = extract_abc(f"Here is the tune:\n\n```abc\n{cut}")
    assert result.abc == cut + "\n" and result.cut_off
    assert "the reply ends inside the tune: it was cut off" in result.notes


def test_a_reply_cut_off_inside_a_second_draft_keeps_the_complete_first() -> None:
    text = f"```abc\n{FIRST_TUNE}```\n\nBetter:\n\n```abc\n{SECOND_TUNE[:-10]}"
    result = extract_abc(text)
    assert result.abc == FIRST_TUNE and not result.cut_off
    assert "skipped the last tune: the reply ends inside it" in result.notes


def test_a_tune_with_no_key_is_taken_when_there_is_nothing_else() -> None:
    text = "好的，这是曲子：\nX:163928 L:1/8 M:4/4 K\n|: E2 | A3 B cBcA | BAAB cBAG |]\n"
    result = extract_abc(text)
    assert result.abc == "X:163928 L:1/8 M:4/4 K\n|: E2 | A3 B cBcA | BAAB cBAG |]\n"
    assert "took a tune that has no K: line, the only one there is" in result.notes
