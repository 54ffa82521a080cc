"""The directive filter: each rule of its one list, the forms a directive can take, and a fuzz of
every directive abcm2ps and abc2midi document, run through the filter and then through the real
programs under strace, which says whether anything touched a file it should not have."""

from __future__ import annotations

import gzip
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from img2music.tools.abc.check import compile_abc
from img2music.tools.abc.directives import RULES, Rule, filter_directives, forbidding_rule
from tests.needs import needs_programs

TUNE = "X:1\nT:Rules\nM:4/4\nL:1/4\n{header}\nK:C\nCDEF|{inline}GABc|\n{body}\ncBAG|FEDC|]\n"


def tune(header: str = "%", inline: str = "", body: str = "%") -> str:
    return TUNE.format(header=header, inline=inline, body=body)


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_each_rule_removes_its_directive_and_says_why(rule: Rule) -> None:
    text = tune(header=rule.example, body=rule.example)
    filtered = filter_directives(text)
    lines = filtered.text.split("\n")
    where = [5, 8 + rule.example.count("\n")]  # the two places, 1-based
    assert rule.example.split("\n")[0] not in filtered.text
    assert len(lines) == len(text.split("\n"))  # every other line keeps its number
    assert all(lines[n - 1].startswith("% img2music removed a directive here:") for n in where)
    assert [(d.line, d.severity) for d in filtered.removed] == [(n, "fault") for n in where]
    assert all(rule.why in d.message for d in filtered.removed)
    compiled = compile_abc(text)  # the tune stays music: checked, compiled, the removal reported
    assert compiled.check.ok and compiled.midi is not None, compiled.check.feedback()
    assert compiled.abc == filtered.text
    assert [w.line for w in compiled.check.faults if w.checker == "directive filter"] == where


def test_each_rule_also_removes_its_inline_field() -> None:
    for rule in RULES:
        name, _, value = rule.example.removeprefix("%%").partition(" ")
        if rule.name == "begin… blocks":
            continue  # a block cannot open inside a music line
        field = f"[I:{name} {value.replace(']', '')}]"
        filtered = filter_directives(tune(inline=field))
        assert field not in filtered.text, rule.name
        assert "CDEF|GABc|" in filtered.text
        assert [d.col for d in filtered.removed] == [6], rule.name


@pytest.mark.parametrize("text", [
    "%%abc-include /etc/passwd",
    "%%ABC-INCLUDE /etc/passwd",
    "  %%abc-include /etc/passwd",
    "\ufeff%%abc-include /etc/passwd",
    "I:abc-include /etc/passwd",
    "I: abc-include /etc/passwd",
    "%%abc I:abc-include /etc/passwd",
    "%%abc-\\\ninclude /etc/passwd",
    "%%E\\ % a comment\nPS /etc/hostname",
    "I:abc-include\n+:/etc/passwd",
    "%%MIDI=ptstress /etc/passwd",
    "I:MIDI ptstress /etc/passwd",
    "%%beginsvg\n<script>alert(1)</script>\n%%endsvg",
    "%%beginps\n/x {showpage} def",  # never closed: removed to the end
])
def test_every_form_of_a_directive_is_caught(text: str) -> None:
    filtered = filter_directives(text + "\nCDEF|")
    assert "/etc/" not in filtered.text and "script" not in filtered.text
    assert "showpage" not in filtered.text
    assert len(filtered.removed) == 1
    assert filtered.text.count("\n") == text.count("\n") + 1


def test_what_is_music_or_harmless_is_kept() -> None:
    text = ("%%MIDI program 1\n%%begintext\nA <b>text</b> block\n%%endtext\n%%staffwidth 18cm\n"
            "%%formatting is not a directive\nw: words with %%format in them\n"
            "[I:MIDI program 40]CDEF|\n% %%abc-include in a comment\n")
    filtered = filter_directives(text)
    assert filtered.removed == []
    assert filtered.text == text


# --- The fuzz: every documented directive, then the real programs under strace. -------------

# abcm2ps's Debian manual page lists only a few directives; the rest are documented in its
# online reference (format parameters and pseudo-comments), listed here as that index names them.
ABCM2PS_DOCUMENTED = (
    "abc-charset", "abc-include", "abc-version", "abc2pscompat", "alignbars", "aligncomposer",
    "annotationfont", "autoclef", "barsperstaff", "begin", "beginml", "beginps", "beginsvg",
    "begintext", "bgcolor", "botmargin", "breaklimit", "breakoneoln", "bstemdown", "cancelkey",
    "capo", "center", "clef", "clip", "combinevoices", "composerfont", "composerspace",
    "contbarnb", "continueall", "custos", "dateformat", "dblrepbar", "deco", "decoerr",
    "dynalign", "dynamic", "EPS", "flatbeamgracing", "flatbeams", "font", "footer", "footer2",
    "footerfont", "format", "gchord", "gchordbox", "gchordfont", "glyph", "graceslurs",
    "gracespace", "graceword", "gstemdir", "gutter", "header", "header2", "headerfont",
    "historyfont", "hyphencont", "indent", "infofont", "infoline", "infoname", "infospace",
    "keywarn", "landscape", "leftmargin", "linebreak", "lineskipfac", "linewarn", "map",
    "maxshrink", "maxstaffsep", "maxsysstaffsep", "measrepnb", "measurebox", "measurefirst",
    "measurefont", "measurenb", "microscale", "MIDI", "multicol", "musicfont", "musicspace",
    "newpage", "notespacingfactor", "oneperpage", "ornament", "pageheight", "pagescale",
    "pagewidth", "pango", "parskipfac", "partsbox", "partsfont", "partsspace", "pdfmark",
    "postscript", "ps", "rbdbstop", "rbmax", "rbmin", "repbra", "repeat", "repeatfont",
    "rightmargin", "score", "select", "sep", "setbarnb", "setdefl", "setfont-1", "setfont-2",
    "setfont-3", "setfont-4", "shiftunison", "slurheight", "splittune", "squarebreve",
    "ss-pref", "staff", "staffbreak", "stafflines", "staffnonote", "staffscale", "staffsep",
    "staffwidth", "staves", "stemdir", "stemheight", "straightflags", "stretchlast",
    "stretchstaff", "subtitlefont", "subtitlespace", "svg", "sysstaffsep", "tablature",
    "tempofont", "text", "textfont", "textoption", "textspace", "tieheight", "timewarn",
    "titlecaps", "titlefont", "titleformat", "titleleft", "titlespace", "titletrim",
    "topmargin", "topspace", "transpose", "tune", "tuplets", "user", "vocal", "vocalabove",
    "vocalfont", "vocalspace", "voice", "voicecolor", "voicecombine", "voicefont", "voicemap",
    "voicescale", "vskip", "wordsfont", "wordsspace", "writefields", "writehistory",
)
MANUALS = (Path("/usr/share/man/man1/abcm2ps.1.gz"), Path("/usr/share/man/man1/abc2midi.1.gz"),
           Path("/usr/share/doc/abcmidi/abcguide.txt.gz"), Path("/usr/share/doc/abcm2ps/README.md"))
# A tune with every kind of text a font or colour can apply to, so a value that leaks shows.
RICH_TUNE = """X:1
T:Fuzz
T:Subtitle
C:Composer
O:Origin
R:Reel
P:AB
M:4/4
L:1/8
Q:"Allegro" 1/4=120
{header}
V:1 name="Melody"
K:C
P:A
|:"C"CDEF "^annotation"GABc|1 cBAG FEDC:|2 c2 c2 c4||
w:la la la la la la la la
{body}
P:B
[I:{inline}] CEGc cGEC|]
W:Words after the tune
"""
WRITES = re.compile(r'^\d+ +(?:open|openat|creat)\([^"\n]*"(?P<path>[^"\n]+)"[^\n]*'
                    r'O_(?:WRONLY|RDWR|CREAT)[^\n]*'
                    r'|^\d+ +(?:rename|renameat2?|unlink|unlinkat|mkdir|mkdirat|link|symlink)\b.*',
                    re.M)
MARKUP = ('"ZZZ', "<YYY", "<?x ")
PROGRAM_SECONDS = 20


def documented_directives() -> tuple[set[str], set[str]]:
    """Directive names and `%%MIDI` commands the installed manuals and abcm2ps itself name."""
    names = set(ABCM2PS_DOCUMENTED)
    midi: set[str] = set()
    for manual in MANUALS:
        if manual.is_file():
            data = manual.read_bytes()
            text = (gzip.decompress(data) if manual.suffix == ".gz" else data).decode(
                errors="replace")
            names |= set(re.findall(r"%%([A-Za-z][\w-]*)", text))
            midi |= set(re.findall(r"%%MIDI\s+([a-z]\w*)", text))
    listed = subprocess.run(["abcm2ps", "-H"], capture_output=True, text=True, check=False)
    names |= {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    return names, midi


def traced(program: list[str], folder: Path, output: str) -> list[str]:
    """What the program did to files other than its input and its one output file, and whether
    it hung (`timeout` inside strace kills it, so nothing is left running)."""
    log = folder / "trace.log"
    finished = subprocess.run(["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=%file",
                               "-o", str(log), *bounded(program)],
                              cwd=folder, capture_output=True, check=False)
    trace = log.read_text(errors="replace")
    touched = [line for line in trace.splitlines() if SENTINEL in line]
    writes = [match[0] for match in WRITES.finditer(trace)
              if match["path"] not in (output, None)]
    hung = [f"did not finish within {PROGRAM_SECONDS} s"] if finished.returncode == 124 else []
    return touched + writes + hung


# The file the payloads name, from each program's folder (`<tmp>/<case>`): relative, because
# abc2midi reads only the first 80 characters of an include's path, and a temporary folder's
# absolute path can be longer (pytest-xdist's are), which would leave the oracle blind.
SENTINEL = "../sentinel/file"


def bounded(program: list[str]) -> list[str]:
    return ["timeout", "-k", "5", str(PROGRAM_SECONDS), *program]


def files_touched(case: tuple[str, str, Path]) -> list[str]:
    """abcm2ps (without its own secure mode: the filter must stand alone) and abc2midi, on the
    filtered tune, under strace: what each one did to files it should not have touched."""
    label, text, root = case
    folder = root / re.sub(r"\W", "_", label)
    folder.mkdir()
    (folder / "tune.abc").write_text(filter_directives(text).text, encoding="utf-8")
    problems = [f"abcm2ps {label}: {line}" for line in traced(
        ["abcm2ps", "-q", "-g", "-O", "score", "tune.abc"], folder, "score001.svg")]
    return problems + [f"abc2midi {label}: {line}" for line in traced(
        ["abc2midi", "tune.abc", "-o", "tune.mid", "-NGUI"], folder, "tune.mid")]


def markup_leaked(case: tuple[str, str, Path]) -> list[str]:
    """abcm2ps on the filtered tune: any of the payload's markup that reached the SVG raw."""
    label, text, root = case
    with tempfile.TemporaryDirectory(dir=root) as work:
        folder = Path(work)
        (folder / "tune.abc").write_text(filter_directives(text).text, encoding="utf-8")
        subprocess.run(bounded(["abcm2ps", "-q", "-g", "-O", "score", "tune.abc"]), cwd=folder,
                       capture_output=True, check=False)
        svg = "".join(path.read_text(errors="replace") for path in folder.glob("score*.svg"))
    return [f"abcm2ps {label}: raw markup {marker!r} in the SVG" for marker in MARKUP
            if marker in svg]


@needs_programs("abcm2ps", "abc2midi", "strace")
def test_no_documented_directive_reads_or_writes_a_file_or_markup_after_the_filter(
        tmp_path: Path) -> None:
    names, midi = documented_directives()
    assert len(names) > 150 and len(midi) > 40  # the manuals were read
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_text("X:1\nT:SENTINEL\nK:C\nC|\n%!PS\n", encoding="utf-8")
    path = SENTINEL
    payload = 'PAY"ZZZ<YYY/>}<?x ?>'
    reads: list[tuple[str, str, Path]] = []
    markup: list[tuple[str, str, Path]] = []
    for name in sorted(names):
        reads.append((f"{name} path", RICH_TUNE.format(
            header=f"%%{name} {path}", body=f'I:{name} "{path}"', inline=f"{name} {path}"),
            tmp_path))
        markup.append((f"{name} markup", RICH_TUNE.format(
            header=f"%%{name} {payload}", body=f"I:{name} {payload}",
            inline=f"{name} {payload}"), tmp_path))
    for command in sorted(midi):
        reads.append((f"MIDI {command}", RICH_TUNE.format(
            header=f"%%MIDI {command} {path}", body=f"I:MIDI {command} {path}",
            inline=f"MIDI {command} {path}"), tmp_path))
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [problem for found in pool.map(files_touched, reads) for problem in found]
        problems += [problem for found in pool.map(markup_leaked, markup) for problem in found]
    print(f"{len(names)} directives, {len(midi)} MIDI commands")  # noqa: T201
    assert problems == []


@needs_programs("abc2midi", "strace")
def test_the_fuzz_oracle_sees_what_the_filter_prevents(tmp_path: Path) -> None:
    """Without the filter, the same oracle catches an include: the fuzz can fail."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_text("X:1\nT:SENTINEL\nK:C\nC|\n", encoding="utf-8")
    folder = tmp_path / "raw"
    folder.mkdir()
    text = RICH_TUNE.format(header=f"%%abc-include {SENTINEL}", body="%",
                            inline="MIDI program 1")
    (folder / "tune.abc").write_text(text, encoding="utf-8")
    assert traced(["abc2midi", "tune.abc", "-o", "tune.mid", "-NGUI"], folder, "tune.mid")
    assert forbidding_rule("abc-include") is not None
