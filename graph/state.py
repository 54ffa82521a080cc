"""What a run knows: its inputs, every attempt the model made, and what was chosen.

Everything here is plain JSON (the image travels as a data URL, a compiled tune as base64
MIDI), so a checkpointer can save a run after each node and LangGraph Studio can show it. What
a caller gives is `Input` (the image and a note); what it gets back is `Output`; `State` is
everything in between. The JSON shapes of the toolkit's answers (a check, the metrics, an
example) are TypedDicts here, so nodes and reports read them without validating them again.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic reads these on Python 3.11
    Required,
    cast,
)

from pydantic import Field
from typing_extensions import TypedDict

from img2music.settings import MAX_TAKES

# What the takes of a run share: each take composes from these keys, as if the last shared step
# (describe, or retrieve) had just run.
SHARED_KEYS = ("image", "note", "description", "examples", "status")

AttemptKind = Literal["compose", "repair", "refine", "section", "continue"]
Status = Literal["running", "done", "failed"]


class DiagnosticJSON(TypedDict):
    """`tools.abc.diagnostics.Diagnostic` as JSON: a problem at a place in the tune."""

    severity: Literal["error", "fault"]
    line: int
    col: int
    message: str
    source: str
    checker: str


class Check(TypedDict):
    """`tools.abc.check.ParseCheck` as JSON: the checker's verdict on a tune."""

    ok: bool
    errors: list[DiagnosticJSON]
    faults: list[DiagnosticJSON]
    error_count: int
    fault_count: int
    tunes: int
    voices: int
    bars: int
    notes: int
    duration_beats: float
    backend: str | None


class ControlVerdict(TypedDict):
    """`tools.abc.controls.Verdict` as JSON: whether a tune honours one musical control."""

    control: Literal["bars", "seconds", "tempo", "key", "meter", "voices", "instruments"]
    asked: str
    found: str
    honoured: bool
    message: str
    line: int
    source: str


class MetricJSON(TypedDict):
    """`tools.metrics.MetricValue` as JSON: a value, or None with the reason it has none."""

    key: str
    name: str
    value: float | None
    undefined_reason: str | None


class Metrics(TypedDict):
    """`tools.metrics.TuneMetrics` as JSON: MusPy's eight metrics and the tune's size."""

    pitch_range: MetricJSON
    n_pitches_used: MetricJSON
    n_pitch_classes_used: MetricJSON
    polyphony: MetricJSON
    scale_consistency: MetricJSON
    pitch_entropy: MetricJSON
    pitch_class_entropy: MetricJSON
    empty_beat_rate: MetricJSON
    length_seconds: float
    length_beats: float
    bars: int
    voices: int
    notes: int


class Example(TypedDict):
    """`tools.retrieval.retriever.RetrievedExample` as JSON: a real tune shown to the model."""

    id: str
    caption: str
    abc: str
    score: float
    image_similarity: float | None
    text_similarity: float | None
    trimmed: bool
    metadata: dict[str, Any]


class Explanation(TypedDict):
    """What shaped the chosen tune: its attempt, the loop it took, the examples, and where in
    the image it came from (a grid per section with attention maps; a note on any fallback)."""

    method: Literal["attention", "clip", "none"]
    chosen_attempt: int
    rounds: int
    repairs: int
    examples: list[str]
    grid: NotRequired[list[list[float]]]
    sections: NotRequired[dict[str, list[list[float]]]]
    layers: NotRequired[int]
    heads: NotRequired[int]
    tokens: NotRequired[int]
    note: NotRequired[str]


class Attempt(TypedDict):
    """One answer of the model in the compose loop, kept whether it was usable or not."""

    n: int  # its place in `attempts`; later nodes update an attempt by this number
    round: int  # 0 is the first composition; 1, 2, … are refinement rounds
    kind: AttemptKind
    raw: str  # the model's text, reasoning included, capped
    abc: str | None  # the tune extracted and mechanically repaired
    motivation: str
    fixes: list[str]  # mechanical repairs applied, one line each
    notes: list[str]  # what extraction did
    check: Check | None
    midi: str | None  # base64 of the MIDI parse-check compiled; measuring and rendering use it
    metrics: Metrics | None  # of a playable tune, once the run has measured it
    valid: bool  # playable: the check found no error (faults may remain)
    input_tokens: int
    output_tokens: int
    seconds: float
    constrained: bool  # the model wrote under the ABC grammar (tokens outside it were masked)
    controls: NotRequired[list[ControlVerdict]]  # each musical control the run set, judged


class Message(TypedDict):
    """One turn of the compose conversation, in the OpenAI chat format."""

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]


def merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Per-node bookkeeping adds up: a node that runs three times counts three times."""
    merged = dict(left)
    for key, value in right.items():
        if isinstance(value, int | float) and isinstance(merged.get(key), int | float):
            merged[key] = merged[key] + value
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def upsert_attempts(left: list[Attempt], right: list[Attempt]) -> list[Attempt]:
    """A node returns new attempts to append, or known ones (same `n`) with their verdicts."""
    merged = list(left)
    for attempt in right:
        if attempt["n"] < len(merged):
            merged[attempt["n"]] = attempt
        else:
            merged.append(attempt)
    return merged


def fault_count(attempt: Attempt) -> int:
    """Faults the checker found in the attempt's tune: what a musician would still correct."""
    check = attempt["check"]
    return check["fault_count"] if check is not None else 0


def is_clean(attempt: Attempt) -> bool:
    """Playable with nothing left to correct, so no repair is asked for."""
    return attempt["valid"] and fault_count(attempt) == 0


def repeats_an_earlier_tune(attempts: Sequence[Attempt]) -> bool:
    """The latest answer's tune is one the model already wrote: asking again would pay for an
    answer that is already known."""
    last = attempts[-1]["abc"]
    return last is not None and any(attempt["abc"] == last for attempt in attempts[:-1])


def replaces(candidate: Attempt, current: Attempt | None) -> bool:
    """Whether the run stands on `candidate` rather than on `current`: a playable tune, new,
    with no more faults; so the run ends on the best playable tune, fewest faults then latest."""
    if not candidate["valid"]:
        return False
    if current is None:
        return True
    return candidate["abc"] != current["abc"] and fault_count(candidate) <= fault_count(current)


def rounds_and_repairs(attempts: Sequence[Attempt]) -> tuple[int, int]:
    """Refinement rounds reached and grammar repairs asked for: what a tune took to make."""
    return (max((attempt["round"] for attempt in attempts), default=0),
            sum(attempt["kind"] == "repair" for attempt in attempts))


def usage_totals(usage: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Model calls and tokens over every node of a run (`State["usage"]`)."""
    return {key: sum(int(node.get(key, 0)) for node in usage.values())
            for key in ("calls", "input_tokens", "output_tokens")}


class Input(TypedDict):
    """What a run is given (Studio's input form): the image and, if any, a note."""

    image: str  # data URL of the image, downscaled to the model's pixel budget
    note: NotRequired[str]  # the user's line about the mood they want


class Output(TypedDict, total=False):
    """What a run gives back: the tune (None when nothing playable was made) with what a
    musician would still correct in it, why it is as it is, and how the run ended."""

    final_abc: str | None
    faults: list[str]  # what a musician would still correct in the tune, one line each
    fault_count: int  # all of them; `faults` lists the first
    controls: list[ControlVerdict]  # each musical control the run set, honoured or not
    motivation: str
    explanation: Explanation
    status: Status
    failure: str


class State(TypedDict, total=False):
    image: str  # data URL of the image, downscaled to the model's pixel budget
    note: str  # the user's line about the mood they want, if any
    description: str
    examples: list[Example]  # retrieved tunes with caption, ABC and both similarities
    conversation: Annotated[list[Message], operator.add]  # grows; its prefix never changes
    attempts: Annotated[list[Attempt], upsert_attempts]
    best: int | None  # index in attempts of the tune the run stands on
    final_abc: str | None
    faults: list[str]  # what a musician would still correct in the final tune, one line each
    fault_count: int  # all of them; `faults` lists the first
    controls: list[ControlVerdict]  # each musical control the run set, honoured or not
    motivation: str
    explanation: Explanation
    status: Status
    failure: str
    usage: Annotated[dict[str, Any], merge]  # node -> {"calls", "input_tokens", "output_tokens"}
    timings: Annotated[dict[str, float], merge]  # node -> seconds


class TakesInput(Input, total=False):
    """What a run of several takes is given (Studio's `img2music_takes`): the image, a note and
    how many takes to compose."""

    takes: Annotated[int, Field(
        ge=1, le=MAX_TAKES, description=f"How many takes to compose at once, 1 to {MAX_TAKES} "
        "(1 when not given), each with its own seed.")]


class Take(Output, total=False):
    """One take of a run of several: what a run of one take gives, with the take's number and
    its seed (a run of one take with that seed gives the same tune)."""

    take: Required[int]  # 1 the first
    seed: Required[int]


class TakesOutput(TypedDict, total=False):
    """What a run of several takes gives back: the description they share, and every take."""

    description: str
    candidates: list[Take]


def check_takes(takes: int) -> None:
    """A run composes 1 to MAX_TAKES takes; another count is refused before any model call."""
    if isinstance(takes, bool) or not isinstance(takes, int) or not 1 <= takes <= MAX_TAKES:
        raise ValueError(f"takes must be 1 to {MAX_TAKES}, not {takes!r}")


def shared_by_takes(state: Mapping[str, Any]) -> State:
    """What the takes of a run start from: its state's `SHARED_KEYS`."""
    return cast(State, {key: state[key] for key in SHARED_KEYS if key in state})


def in_take_order(left: list[Take], right: list[Take]) -> list[Take]:
    """Takes finish in any order; a run lists them by number."""
    return sorted([*left, *right], key=lambda take: take["take"])


class TakesState(State, total=False):
    takes: int
    candidates: Annotated[list[Take], in_take_order]


class TakeState(State, total=False):
    """What one take starts from: the shared keys (`SHARED_KEYS`) and its number."""

    take: int  # 0 the first
