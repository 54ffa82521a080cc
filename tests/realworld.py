"""Real ABC for the tests, read as it is: what language models wrote when asked for music (the
shared reference folder), Debian's abcmidi and abcm2ps examples, and music21's folk corpus.

abc2midi, the reference implementation, is the oracle of what plays; it is run here directly,
sharing no code with the checker it judges. Nothing here reads the shared holdout folder.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from img2music.tools.music21_corpus import CorpusTune, iter_corpus_tunes
from tests.oracles import ABC2MIDI_ERROR, abc2midi_output, sounding_notes

REPOSITORY = Path(__file__).resolve().parents[1]
DEBIAN_EXAMPLES = (Path("/usr/share/doc/abcmidi/examples"), Path("/usr/share/doc/abcm2ps/examples"))
CORPUS_STRIDE = 16


class MissingTestData(RuntimeError):
    """Data the tests read is not where the project says it is: a setup fault, never a skip."""


def reference_folder() -> Path:
    """`../shared/reference` of the repository root: a clean clone sits beside `shared/` as the
    integrator's checkout does; a worktree one level deeper finds it further up."""
    for folder in REPOSITORY.parents:
        candidate = folder / "shared" / "reference"
        if (candidate / "llm-outputs").is_dir():
            return candidate
    raise MissingTestData(f"no shared/reference/llm-outputs above {REPOSITORY}: the real model "
                          "replies the tests read are missing")


def llm_replies() -> list[Path]:
    """The real replies, in their numbered order (SOURCES.md says where each comes from)."""
    replies = sorted((reference_folder() / "llm-outputs").glob("[0-9]*.txt"))
    if not replies:
        raise MissingTestData("the llm-outputs folder holds no replies")
    return replies


def papers_tune() -> str:
    """The method's paper's own Keye-VL-8B tune (Fig. 2a): every bar is short, yet it plays."""
    return (reference_folder() / "llm-outputs" / "00-paper-fig2.txt").read_text(encoding="utf-8")


@cache
def abc2midi_reads_cleanly(text: str) -> bool:
    """abc2midi, as installed, reads the tune with no error and writes a MIDI file."""
    output, midi = abc2midi_output(text)
    return ABC2MIDI_ERROR.search(output) is None and midi is not None


def written_notes_played(text: str) -> int:
    """Notes abc2midi plays from what is written (chord symbols not voiced)."""
    return sounding_notes(abc2midi_output(text, flags=("-NGUI",))[1])


def debian_example_tunes() -> list[tuple[str, str]]:
    """(id, text) of every tune in the example folders of Debian's abcmidi and abcm2ps."""
    missing = [str(folder) for folder in DEBIAN_EXAMPLES if not folder.is_dir()]
    if missing:
        raise MissingTestData(f"{', '.join(missing)} missing: install the Debian packages "
                              "abcmidi and abcm2ps (scripts/install.sh)")
    tunes = []
    for path in sorted(p for folder in DEBIAN_EXAMPLES for p in folder.glob("*.abc")):
        lines = path.read_bytes().decode("utf-8", errors="replace").replace("\r", "").split("\n")
        starts = [index for index, line in enumerate(lines) if line.startswith("X:")]
        for number, start in enumerate(starts):
            end = starts[number + 1] if number + 1 < len(starts) else len(lines)
            text = "\n".join(lines[start:end]).rstrip("\n") + "\n"
            tunes.append((f"{path.parent.parent.name}/{path.name}:{start + 1}", text))
    return tunes


@cache
def corpus_sample() -> list[CorpusTune]:
    """Every 16th tune of music21's five folk collections."""
    return [tune for index, tune in enumerate(iter_corpus_tunes()) if index % CORPUS_STRIDE == 0]


@cache
def realworld_tunes() -> list[tuple[str, str]]:
    """The Debian examples and the corpus sample that abc2midi reads with no error."""
    tunes = debian_example_tunes() + [(tune.id, tune.text) for tune in corpus_sample()]
    return [(tune_id, text) for tune_id, text in tunes if abc2midi_reads_cleanly(text)]
