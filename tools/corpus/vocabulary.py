"""The words captions are written with: tune types, paces, moods, the German (and pinyin)
vocabulary of the Essen collection's headers, places, modes, meters, intervals and note values.

They are module constants, not prompt files: they translate the corpora's own header vocabulary,
and changing a word means rebuilding the index, not retrying a prompt. Whatever the tables do not
know is left out of a caption, never guessed.
"""

from __future__ import annotations

from fractions import Fraction

# --- Tune types and tempo -------------------------------------------------------------------

# English tune types as R:, G:, or a title's last word or " -- Reel" suffix give them.
TUNE_TYPES = {
    "reel": "reel", "jig": "jig", "double jig": "double jig", "single jig": "single jig",
    "slip jig": "slip jig", "slipjig": "slip jig", "hop jig": "hop jig", "slide": "slide",
    "hornpipe": "hornpipe", "strathspey": "strathspey", "strathsy": "strathspey",
    "clog": "clog", "lancashire clog": "clog", "highland fling": "highland fling",
    "fling": "highland fling", "set dance": "set dance", "long dance": "long dance",
    "march": "march", "slow march": "slow march", "quick step": "quickstep",
    "quickstep": "quickstep", "waltz": "waltz", "polka": "polka", "mazurka": "mazurka",
    "schottische": "schottische", "air": "air", "slow air": "slow air", "lament": "lament",
    "lamentation": "lament", "song": "song", "minuet": "minuet", "gavotte": "gavotte",
    "country dance": "country dance", "contra dance": "contra dance", "walkaround": "walkaround",
    "walk around": "walkaround", "essence": "essence", "breakdown": "breakdown",
    "planxty": "planxty", "rant": "rant", "lullaby": "lullaby", "barn dance": "barn dance",
    "dance": "dance", "cotillion": "cotillion", "quadrille": "quadrille", "galop": "galop",
}
# How a tune type is usually played, for tunes whose source gives no tempo.
TYPICAL_PACE = {
    "reel": "usually played at a brisk pace",
    "jig": "usually played at a lively pace",
    "double jig": "usually played at a lively pace",
    "single jig": "usually played at a lively pace",
    "slide": "usually played at a lively pace",
    "slip jig": "usually played at a lilting pace",
    "hop jig": "usually played at a lilting pace",
    "hornpipe": "usually played at a steady, swinging pace",
    "clog": "usually played at a steady pace",
    "strathspey": "usually played at a stately pace",
    "highland fling": "usually played at a steady pace",
    "march": "usually played at a marching pace",
    "quickstep": "usually played at a quick marching pace",
    "slow march": "usually played at a slow marching pace",
    "waltz": "usually played at a waltz pace",
    "polka": "usually played at a quick pace",
    "air": "usually played slowly and freely",
    "slow air": "usually played slowly and freely",
    "lament": "usually played slowly",
    "lullaby": "usually sung gently and slowly",
}
# Expression marks (O'Neill's N:, Aird's and others' Q: text) and the mood each states.
EXPRESSION_MOODS = {
    "slow": "", "very slow": "", "slowly": "", "moderate": "", "moderato": "", "andante": "",
    "allegro": "", "briskly": "brisk", "lively": "lively", "spirited": "spirited",
    "with spirit": "spirited", "animated": "animated", "with animation": "animated",
    "tenderly": "tender", "with feeling": "expressive", "with expression": "expressive",
    "gaily": "cheerful", "cheerful": "cheerful", "cheerfully": "cheerful",
    "gheerfully": "cheerful", "playfully": "playful", "playful": "playful",
    "plaintively": "plaintive", "plaintive": "plaintive", "boldly": "bold",
    "gracefully": "graceful", "graceful": "graceful", "mournful": "mournful",
    "mournfully": "mournful", "airily": "airy", "distinctly": "", "smoothly": "smooth",
}
# A Q: pulse (beats a minute, as written) in words.
PACE_WORDS = ((66, "slow"), (95, "moderate"), (135, "lively"))
PACE_FAST = "fast"

# --- German (and pinyin) headers of the Essen collection ------------------------------------

# Genre terms of Essen's R: field, normalised (lower case, umlauts spelled out, no hyphens or
# spaces, plural "-lieder" as "-lied"); the frequent ones, enough for most of the 8,514 tunes.
GERMAN_GENRES = {
    "ballade": "ballad", "romanze": "romance", "lied": "song", "liebeslied": "love song",
    "erzaehlendesvolkslied": "narrative folk song", "erzaehlendeslied": "narrative song",
    "erzaehlendelied": "narrative song", "erzaehlung": "narrative song",
    "kinderlied": "children's song", "staendelied": "occupational song",
    "berufslied": "occupational song", "soldatenlied": "soldiers' song",
    "religioeseslied": "sacred song", "religioeselied": "sacred song", "religioes": "sacred song",
    "geistlich": "sacred song", "geistliche": "sacred song", "geistliches": "sacred song",
    "geistlicheslied": "sacred song", "geistlichelied": "sacred song",
    "trinklied": "drinking song", "zechlied": "drinking song", "kriegslied": "war song",
    "scherzlied": "humorous song", "scherz": "humorous song", "reigen": "round dance",
    "reigentanz": "round dance", "tanzlied": "dance song", "tanz": "dance",
    "abschiedslied": "farewell song", "jaegerlied": "hunting song", "jagdlied": "hunting song",
    "sagenlied": "legend song", "legendenlied": "legend song", "legende": "legend",
    "jugendlied": "youth song", "morallied": "moral song", "ehestandslied": "marriage song",
    "hochzeitslied": "wedding song", "brautlied": "bridal song", "studentenlied": "student song",
    "geselligkeitslied": "convivial song", "tanzspiel": "dance game",
    "handwerkerlied": "craftsmen's song", "gesellenlied": "journeymen's song",
    "wanderlied": "wandering song", "historischeslied": "historical song",
    "historisches": "historical song", "historische": "historical song",
    "vaterlandslied": "patriotic song", "national": "patriotic song",
    "patriotisch": "patriotic song", "heimatlied": "homeland song",
    "lyrischeslied": "lyrical song", "lustigeromanze": "comic romance", "wiegenlied": "lullaby",
    "schlaflied": "lullaby", "kinderspiel": "children's game", "spiellied": "game song",
    "brauchtumslied": "custom song", "brauchtum": "custom song", "spottlied": "mocking song",
    "jahreszeitenlied": "seasonal song", "naturlied": "nature song", "bauernlied": "farmers' song",
    "maerchenlied": "fairy-tale song", "zauberlied": "magic song", "schalkslied": "rogue's song",
    "schalklied": "rogue's song", "schelmenlied": "rogue's song", "trostlied": "consolation song",
    "kiltlied": "night-courting song", "hirtenlied": "shepherds' song",
    "schaeferlied": "shepherds' song", "schwank": "comic tale", "marienlied": "Marian song",
    "siegeslied": "victory song", "festlied": "festive song", "heldenlied": "heroic song",
    "seemannslied": "sailors' song", "schifferlied": "boatmen's song",
    "bergmannslied": "miners' song", "weihnachtslied": "Christmas song",
    "weihnachten": "Christmas song", "heiligenlied": "saints' song", "loblied": "song of praise",
    "danklied": "song of thanks", "arbeitslied": "work song", "wallfahrtslied": "pilgrimage song",
    "tierlied": "animal song", "jodler": "yodel", "alpenlied": "alpine song", "choral": "chorale",
    "tagelied": "dawn song", "klagelied": "lament", "liebesklage": "love lament",
    "trauerlied": "mourning song", "walzer": "waltz", "ritterlied": "knights' song",
    "reiterlied": "cavalry song", "raetsellied": "riddle song", "luegenlied": "tall-tale song",
    "zeitungslied": "broadside song", "erbauungslied": "devotional song",
    # Chinese genres of the Han collections, in pinyin.
    "xiaodiao": "xiaodiao (ditty)", "shange": "shan'ge (mountain song)",
    "haozi": "haozi (work song)", "xintianyou": "xintianyou (mountain song)",
    "yangge": "yangge (dance song)", "erge": "children's song", "qingge": "love song",
    "xinminge": "new folk song", "geminglishiminge": "revolutionary folk song",
}
# Headings that a more specific genre beside them makes redundant.
GENERIC_GENRES = frozenset({"song", "occupational song"})
# Themes of Essen's R: field (same normalisation), as the caption lists them.
GERMAN_THEMES = {
    "liebe": "love", "tod": "death", "klage": "lament", "mord": "murder", "leid": "sorrow",
    "sage": "legend", "verfuehrung": "seduction", "standesunterschied": "class difference",
    "selbstmord": "suicide", "abschied": "farewell", "schwangerschaft": "pregnancy",
    "betrug": "deception", "brautwerbung": "courtship", "werbung": "courtship",
    "vergeblichewerbung": "vain courtship", "liebeslust": "love's delight", "strafe": "punishment",
    "todesahnung": "foreboding of death", "hinrichtung": "execution", "hochzeit": "wedding",
    "fruehling": "spring", "sommer": "summer", "herbst": "autumn", "winter": "winter",
    "trennung": "parting", "habgier": "greed", "reue": "remorse", "entfuehrung": "abduction",
    "ehe": "marriage", "natur": "nature", "krieg": "war", "abend": "evening", "morgen": "morning",
    "nacht": "night", "rache": "revenge", "spott": "mockery", "treue": "faithfulness",
    "untreue": "infidelity", "freude": "joy", "kindsmord": "infanticide", "flucht": "flight",
    "geist": "ghosts", "gefangenschaft": "captivity", "rueckkehr": "homecoming",
    "heimkehr": "homecoming", "familiengeschichte": "family history", "wanderschaft": "wandering",
    "rettung": "rescue", "verlasseneliebe": "forsaken love", "verboteneliebe": "forbidden love",
    "betrogeneliebe": "betrayed love", "vergeltung": "retribution", "sehnsucht": "longing",
    "trauer": "grief", "vergaenglichkeit": "transience", "heimweh": "homesickness",
    "eifersucht": "jealousy", "freundschaft": "friendship", "jagd": "hunting",
    "enttaeuschung": "disappointment", "unfall": "accident", "neujahr": "New Year",
    "jahreszeiten": "the seasons", "arbeit": "work", "grab": "the grave",
}
# Compound heads that German elides in lists ("Kinder -, Wiegen - Lied").
ELIDED_HEADS = ("lied", "spiel", "tanz", "geschichte")
# Essen's O: names places from the continent down; continents are dropped.
CONTINENTS = frozenset({
    "europa", "mitteleuropa", "osteuropa", "suedosteuropa", "nordeuropa", "westeuropa",
    "suedeuropa", "asien", "ostasien",
})
COUNTRIES = {
    "deutschland": "Germany", "luxemburg": "Luxembourg", "frankreich": "France",
    "polen": "Poland", "jugoslawien": "Yugoslavia", "schweiz": "Switzerland",
    "niederlande": "the Netherlands", "oesterreich": "Austria", "irland": "Ireland",
    "udssr": "the USSR", "ungarn": "Hungary", "tschechoslowakei": "Czechoslovakia",
    "rumaenien": "Romania", "russland": "Russia", "italien": "Italy", "schweden": "Sweden",
    "china": "China", "ukraine": "Ukraine", "daenemark": "Denmark", "belgien": "Belgium",
    "england": "England", "schottland": "Scotland", "norwegen": "Norway", "spanien": "Spain",
    "scotch": "Scotland", "scottish": "Scotland", "irish": "Ireland", "ireland": "Ireland",
    "scotland": "Scotland", "germany": "Germany", "france": "France",
    "highland": "the Scottish Highlands", "westindia": "the West Indies",
}
PLACES = {
    "lothringen": "Lorraine", "hessen": "Hesse", "schlesien": "Silesia",
    "rheinland": "the Rhineland", "niederrhein": "the Lower Rhine", "westfalen": "Westphalia",
    "elsass": "Alsace", "thueringen": "Thuringia", "sachsen": "Saxony", "franken": "Franconia",
    "schwaben": "Swabia", "bayern": "Bavaria", "pommern": "Pomerania", "tirol": "Tyrol",
    "siebenbuergen": "Transylvania", "boehmen": "Bohemia", "steiermark": "Styria",
    "koeln": "Cologne", "wuerttemberg": "Württemberg", "ostpreussen": "East Prussia",
    "preussen": "Prussia", "galizien": "Galicia", "norddeutschland": "northern Germany",
    "sueddeutschland": "southern Germany", "rhein": "the Rhine", "rheinpfalz": "the Palatinate",
    "rheinprovinz": "the Rhine Province", "niedersachsen": "Lower Saxony",
    "hannover": "Hanover", "oberfranken": "Upper Franconia", "flaemisch": "Flanders",
    "nordwesten": "the north-west", "flamen": "Flanders", "shanbei": "northern Shaanxi",
    "schleswigholstein": "Schleswig-Holstein", "nordrheinwestfalen": "North Rhine-Westphalia",
}
# Umlauts of a DOS code page that some Essen files carry as control characters.
DOS_UMLAUTS = str.maketrans({"\x81": "ü", "\x84": "ä", "\x94": "ö", "\x8e": "Ä", "\x99": "Ö",
                             "\x9a": "Ü"})

# --- The words for numbers -----------------------------------------------------------------

MODES = {
    "": "major", "m": "minor", "min": "minor", "maj": "major", "ion": "major", "aeo": "minor",
    "mix": "mixolydian", "dor": "dorian", "phr": "phrygian", "lyd": "lydian", "loc": "locrian",
}
KEY_SUFFIXES = ("clef", "treble", "bass", "alto", "tenor", "middle", "transpose", "octave")
METER_KINDS = {
    1: "", 2: "simple duple", 3: "simple triple", 4: "simple quadruple", 5: "irregular",
    6: "compound duple", 7: "irregular", 9: "compound triple", 11: "irregular",
    12: "compound quadruple",
}
INTERVALS = (
    "a unison", "a semitone", "a whole tone", "a minor third", "a major third", "a fourth",
    "a tritone", "a fifth", "a minor sixth", "a major sixth", "a minor seventh",
    "a major seventh",
)
# Beyond an octave, the interval above the octave(s) in plain words.
INTERVALS_ABOVE_OCTAVE = (
    "", "a semitone", "a second", "a third", "a third", "a fourth", "a half", "a fifth",
    "a sixth", "a sixth", "a seventh", "a seventh",
)
OCTAVES = ("", "an octave", "two octaves", "three octaves", "four octaves")
# Notes per quarter-note beat (per voice) and the word for that density.
DENSITY_WORDS = ((1.0, "sparse"), (1.6, "measured"), (2.6, "flowing"))
DENSITY_BUSY = "busy"
# The most frequent gap between note onsets, in quarter notes, and its name.
NOTE_VALUES = {
    Fraction(1, 4): "sixteenth notes", Fraction(1, 3): "triplet eighth notes",
    Fraction(1, 2): "eighth notes", Fraction(3, 4): "dotted eighth notes",
    Fraction(1): "quarter notes", Fraction(3, 2): "dotted quarter notes",
    Fraction(2): "half notes", Fraction(3): "dotted half notes", Fraction(4): "whole notes",
}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")
TRAILING_ARTICLES = frozenset({"The", "A", "An"})
