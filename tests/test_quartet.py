"""Issue 18's composer, end to end in Python: a 32-bar string quartet in D minor at 72 BPM with
seed 7 and three takes; three reproducible candidates that honour what was asked, one picked,
one section composed again, and a score MuseScore opens (MusicXML read back by music21)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from music21 import converter, key, stream, tempo

from img2music.pipeline.rework import arecompose_section
from img2music.pipeline.runs import compose
from img2music.pipeline.takes import pick_take
from img2music.settings import Settings
from tests.scripted import ScriptedChatModel
from tests.test_compose_cli import PHOTO
from tests.test_controls import QUARTET
from tests.test_graph import DESCRIPTION, Examples, answer

ASKED: dict[str, Any] = {"bars": 32, "instruments": "string quartet", "key": "D minor",
                         "tempo": 72}
FIRST_LINE = "A4 F2 | E4 D2 | ^C2 D2 E2 | F6 | A4 d2 | c4 B2 | A2 G2 F2 | E6 |"
BRIGHTER = "A4 d2 | e4 f2 | e2 d2 ^c2 | d6 | A4 d2 | c4 B2 | A2 G2 F2 | E6 |"


def test_a_string_quartet_in_three_reproducible_takes_a_section_again_and_musicxml(
    tmp_path: Path,
) -> None:
    model = ScriptedChatModel(replies=[DESCRIPTION, *[answer(QUARTET)] * 3])
    result = compose(PHOTO, out_dir=tmp_path / "photo", takes=3, seed=7, refine=False,
                     explain="none", model_for=lambda _: model,
                     retriever_for=lambda _: Examples(), **ASKED)
    assert result.ok, result.error
    assert len(model.calls) == 4  # one description, then one answer per take
    report = json.loads((result.out_dir / "report.json").read_text())
    seeds = [take["seed"] for take in report["takes"]]
    # Take 1 is the run's seed, each take has its own (tests/test_takes.py reruns them).
    assert seeds[0] == 7 and len(set(seeds)) == 3
    for take in result.takes:
        assert take.ok and take.fault_count == 0, take.faults
        take_report = json.loads((take.out_dir / "report.json").read_text())
        assert {name: take_report["settings"][name] for name in ASKED} == ASKED
        verdicts = {verdict["control"]: verdict["honoured"] for verdict in take_report["controls"]}
        assert verdicts == {"bars": True, "instruments": True, "key": True, "tempo": True,
                            "voices": True}, verdicts
    # Every compose prompt asked for what the user asked, as ABC writes it.
    for call in range(1, 4):
        prompt = model.texts(call)[-1]
        assert "K:Dm" in prompt and "Q:1/4=72" in prompt and "32 bars" in prompt

    assert pick_take(result.out_dir, 2)["picked"] == 2
    second = result.out_dir / "take-2"
    rewrite = ScriptedChatModel(replies=[answer(QUARTET.replace(FIRST_LINE, BRIGHTER, 1))])
    section = asyncio.run(arecompose_section(
        second, "theme", note="brighter", seed=7, model_for=lambda _: rewrite,
        settings=Settings(data_dir=tmp_path)))
    assert section.ok, section.error
    before = (second / "tune.abc").read_text().splitlines()
    after = (section.out_dir / "tune.abc").read_text().splitlines()
    assert [line for line in after if line not in before] == [BRIGHTER]
    assert (second / "tune.abc").read_text() == QUARTET  # the take itself is kept as it was

    score = converter.parse(second / "tune.musicxml")
    assert isinstance(score, stream.Score)
    parts = list(score.parts)
    assert len(parts) == 4
    instruments = [part.getInstrument() for part in parts]
    assert [getattr(played, "midiProgram", None) for played in instruments] == [40, 40, 41, 42]
    assert all(len(part.getElementsByClass(stream.Measure)) == 32 for part in parts)
    signature = next(iter(score.recurse().getElementsByClass(key.KeySignature)))
    assert signature.sharps == -1  # one flat: D minor (or F major), as K:Dm writes it
    mark = next(iter(score.recurse().getElementsByClass(tempo.MetronomeMark)))
    assert mark.number == 72
