"""Reading a tune's header values as a caption states them: key, meter, tempo, title, tune
type, genres and themes (German Essen headers translated), region and composer."""

from __future__ import annotations

import contextlib
import re
import string

from img2music.tools.abc.scan import KEY_TONIC, METER_VALUE, QUOTED, tempo_of
from img2music.tools.corpus.records import Collection
from img2music.tools.corpus.vocabulary import (
    CONTINENTS,
    COUNTRIES,
    DOS_UMLAUTS,
    ELIDED_HEADS,
    EXPRESSION_MOODS,
    GENERIC_GENRES,
    GERMAN_GENRES,
    GERMAN_THEMES,
    KEY_SUFFIXES,
    METER_KINDS,
    MODES,
    PACE_FAST,
    PACE_WORDS,
    PLACES,
    TRAILING_ARTICLES,
    TUNE_TYPES,
)

TITLE_TYPE_SPLIT = re.compile(r"\s*(?:--|[.,;:()])\s*")


def key_name(value: str) -> str:
    """A K: value spelled out: "Am" → "A minor", "Gmix" → "G mixolydian"; "" when unclear."""
    match = KEY_TONIC.match(value.split("%", 1)[0].strip())
    if match is None:
        return ""
    tonic = match["tonic"][0].upper() + match["tonic"][1:]
    word, rest = match["word"].lower(), match["rest"].strip()
    if word in KEY_SUFFIXES or rest.startswith("="):
        word = ""
    mode = MODES.get(word[:3] if len(word) > 1 else word)
    return f"{tonic} {mode}" if mode else ""


def meter_figures(value: str) -> str:
    """An M: value as figures, "C" as "4/4" and "C|" as "2/2"; "" for free meter."""
    text = value.split("%", 1)[0].strip()
    if text == "C":
        return "4/4"
    if text == "C|":
        return "2/2"
    return text if _figures(text) else ""


def meter_phrase(value: str) -> str:
    """The meter in figures and words, short: "6/8 time (compound duple)"."""
    text = value.split("%", 1)[0].strip()
    if text == "C":
        return "common time (4/4)"
    if text == "C|":
        return "cut time (2/2)"
    figures = _figures(text)
    if figures is None:
        return "free time" if text.lower() in {"none", ""} or text.upper().startswith("FREI") \
            else ""
    if text == "4/4":
        return "4/4 time (common time)"
    if text == "2/2":
        return "2/2 time (cut time)"
    beats = sum(int(part) for part in figures["num"].split("+"))
    kind = "irregular" if "+" in figures["num"] else METER_KINDS.get(beats, "")
    return f"{text} time ({kind})" if kind else f"{text} time"


def _figures(text: str) -> re.Match[str] | None:
    """An M: value written as figures (`6/8`, `2+3/8`; no parentheses), as the scanner reads it."""
    match = METER_VALUE.match(text)
    return match if match and match["num"] and match["den"] and "(" not in text else None


def quarter_note_bpm(value: str) -> int | None:
    """A Q: value in quarter notes a minute: "3/8=60" → 90, "1/4=120" → 120, "120" → 120."""
    return tempo_of(value)[0]


def read_tempo(values: list[str]) -> tuple[int | None, int, list[str]]:
    """The first Q: field: bpm, pulse and its quoted words ("Slow")."""
    if not values:
        return None, 0, []
    bpm, pulse = tempo_of(values[0])
    marks = [clean_text(mark) for mark in QUOTED.findall(values[0]) if clean_text(mark)]
    return bpm, pulse, marks


def pace_word(pulse: int) -> str:
    return next((word for limit, word in PACE_WORDS if pulse <= limit), PACE_FAST)


def expression_marks(value: str) -> list[str]:
    """Expression marks in an N: field ("Slow", "With spirit"), not other notes."""
    candidates = QUOTED.findall(value) or [value]
    return [mark for mark in (clean_text(c).rstrip(".") for c in candidates)
            if mark and _mark_parts(mark) is not None]


def _mark_parts(mark: str) -> list[str] | None:
    parts = [p.strip() for p in re.split(r",|\band\b", mark.lower().rstrip(".")) if p.strip()]
    return parts if parts and all(p in EXPRESSION_MOODS for p in parts) else None


def mark_mood(mark: str) -> str:
    parts = _mark_parts(mark) or []
    return ", ".join(mood for part in parts if (mood := EXPRESSION_MOODS[part]))


def clean_text(value: str) -> str:
    """Header text with mojibake repaired: some corpus files are UTF-8 or DOS read as Latin-1."""
    text = value
    if any(0x80 <= ord(char) <= 0xFF for char in text):
        with contextlib.suppress(UnicodeError):
            text = text.encode("latin-1").decode("utf-8")
    text = text.translate(DOS_UMLAUTS)
    text = "".join(char for char in text if char.isprintable())
    return " ".join(text.split()).strip()


def _clean_title(value: str) -> str:
    """A title as read aloud: no quotes or end stop, "Storyteller, The" as "The Storyteller"."""
    title = " ".join(value.replace('"', "").split()).rstrip(".,;:").strip()
    if title.isupper():
        title = string.capwords(title)
    name, comma, article = title.rpartition(", ")
    return f"{article} {name}" if comma and article in TRAILING_ARTICLES else title


def split_title_type(value: str) -> tuple[str, str]:
    """A clean title without its " -- Reel" suffix, and the tune type it states, if any."""
    title = _clean_title(value)
    name, _, suffix = title.rpartition(" -- ")
    if name and (found := _tune_type(suffix.replace('"', "").rstrip(".").strip())):
        return _clean_title(name), found
    for segment in TITLE_TYPE_SPLIT.split(title.lower()):
        words = segment.split()
        for size in (2, 1):
            if len(words) >= size and (found := _tune_type(" ".join(words[-size:]))):
                return title, found
    return title, ""


def _tune_type(text: str) -> str:
    return TUNE_TYPES.get(re.sub(r"[\s-]+", " ", text.lower()).strip(), "")


def genres_and_themes(
    fields: dict[str, list[str]], title_type: str, collection: Collection
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """English genres (R:, G:, the title) and themes (Essen's R:), in the order given."""
    genres: list[str] = []
    themes: list[str] = []
    for value in fields.get("R", []):
        english = _tune_type(value)
        if english:
            genres.append(english)
            continue
        if collection.translate_headers or _looks_german(value):
            for term in _german_terms(value):
                if term in GERMAN_GENRES:
                    genres.append(GERMAN_GENRES[term])
                elif term in GERMAN_THEMES:
                    themes.append(GERMAN_THEMES[term])
        else:
            genres.extend(part.strip().lower() for part in value.split(",") if part.strip())
    genres.extend(found for value in fields.get("G", []) if (found := _tune_type(value)))
    if title_type:
        genres.append(title_type)
    unique = list(dict.fromkeys(genres))
    specific = [genre for genre in unique if genre not in GENERIC_GENRES
                and not any(other.endswith(f" {genre}") for other in unique)]
    return tuple(specific or unique), tuple(dict.fromkeys(themes))


def _looks_german(value: str) -> bool:
    return any(term in GERMAN_GENRES or term in GERMAN_THEMES for term in _german_terms(value))


def _german_terms(value: str) -> list[str]:
    """Essen header terms normalised: "Kinder -, Wiegen - Lied" → ["kinderlied", "wiegenlied"]."""
    text = clean_text(value).rstrip("]").lower()
    for umlaut, spelled in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss")):
        text = text.replace(umlaut, spelled)
    text = re.sub(r"\s*-\s*", "-", text)
    parts = [part.strip(" \"'?!()") for part in re.split(r"[,;.]|\bund\b|\bbzw\b", text)]
    parts = [part for part in parts if re.search(r"[a-z]", part)]
    terms = []
    for index, part in enumerate(parts):
        if part.endswith("-"):
            head = next((h for later in parts[index + 1:] for h in ELIDED_HEADS
                         if re.sub(r"lieder$", "lied", later).endswith(h)), "")
            part += head
        term = re.sub(r"[-\s]", "", part)
        term = term.lstrip("0123456789")
        terms.append(term[:-2] if term.endswith("lieder") else term)
    return terms


def english_region(value: str) -> str:
    """An O: value as an English place, most specific first: "Europa, Mitteleuropa,
    Deutschland, Hessen, Darmstadt" → "Hesse, Germany"; unknown names are kept as written."""
    text = re.sub(r"\([^)]*\)", " ", clean_text(value).rstrip("]"))
    names = [" ".join(part.replace("?", " ").split()) for part in re.split(r"[,;/]", text)]
    names = [re.sub(r"\s*-\s*", "-", name) for name in names if name]
    keys = [_place_key(name) for name in names]
    kept = [(key, name) for key, name in zip(keys, names, strict=True) if key not in CONTINENTS]
    if not kept:
        return ""
    country_at = max((i for i, (key, _) in enumerate(kept) if key in COUNTRIES), default=None)
    if country_at is None:
        return ", ".join(_place_name(key, name) for key, name in reversed(kept[:2]))
    country = COUNTRIES[kept[country_at][0]]
    if country_at + 1 < len(kept):
        key, name = kept[country_at + 1]
        place = _place_name(key, name)
        return place if country in place else f"{place}, {country}"
    return country


def _place_key(name: str) -> str:
    text = name.lower()
    for umlaut, spelled in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss")):
        text = text.replace(umlaut, spelled)
    return re.sub(r"[-\s.]", "", text)


def _place_name(key: str, name: str) -> str:
    return PLACES.get(key) or COUNTRIES.get(key) or name


def region_and_composer(fields: dict[str, list[str]], collection: Collection) -> tuple[str, str]:
    """The region from O: (or a C: that names a people, as Aird's "Irish."), else the
    collection's; the composer from C: unless it names a collector."""
    region = english_region(fields["O"][0]) if "O" in fields else ""
    composer = ""
    for value in fields.get("C", []):
        text = re.sub(r"^by\s+", "", value.strip('" ').rstrip("."), flags=re.IGNORECASE)
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1]
        origin = COUNTRIES.get(_place_key(text.removesuffix(" Air").removesuffix(" air")))
        if origin:
            region = region or origin
        elif text and "collect" not in text.lower() and not composer:
            composer = string.capwords(text) if text.isupper() else text
    return region or collection.region, composer
