"""The settings a user changes per run; LangGraph Studio shows these fields with their help."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

from pydantic import Field

from img2music.settings import (
    MAX_SEED,
    ExplainMode,
    Fusion,
    GrammarMode,
    Settings,
    get_settings,
)
from img2music.tools.abc.controls import (
    BAR_TOLERANCE,
    MAX_BARS,
    MAX_SECONDS,
    MAX_TEMPO,
    MAX_VOICES,
    MIN_BARS,
    MIN_SECONDS,
    MIN_SECONDS_TOLERANCE,
    MIN_TEMPO,
    MIN_VOICES,
    SECONDS_TOLERANCE,
    TEMPO_TOLERANCE_BPM,
    Controls,
    read_controls,
)

# Each field that has an IMG2MUSIC_* setting, and that setting's name.
SETTING_FOR = {
    "vlm_base_url": "vlm_base_url", "vlm_model": "vlm_model", "temperature": "vlm_temperature",
    "top_p": "vlm_top_p", "top_k": "vlm_top_k", "max_tokens": "vlm_max_tokens",
    "thinking": "vlm_thinking", "grammar": "vlm_grammar", "rag_k": "rag_k", "fusion": "rag_fusion",
    "repairs": "max_repairs", "refine_rounds": "refine_rounds", "explain": "explain",
    "prompts_dir": "prompts_dir", "seed": "seed",
}


# Fields that move where the model lives (and so where its API key is sent) or which files are
# read (the prompt folder; with the local backend, the model's folder and code): a run's context
# from LangGraph's API may not change them unless the operator allows it.
OPERATOR_FIELDS = ("vlm_base_url", "vlm_model", "prompts_dir")
_FROM_OPERATOR: ContextVar[bool] = ContextVar("img2music_context_from_operator", default=False)


class RunOverrideRefused(ValueError):
    """A run's context set a field only the operator may set; the message names it."""


@contextmanager
def as_operator() -> Iterator[None]:
    """Contexts made inside this block come from the operator (Python, the CLI, an eval config),
    not from a request, so they may set the operator fields."""
    token = _FROM_OPERATOR.set(True)
    try:
        yield
    finally:
        _FROM_OPERATOR.reset(token)


# Each prompt template a run can replace, and the context field that holds its replacement.
PROMPT_FIELDS = {"system.j2": "system_prompt", "describe.j2": "describe_prompt",
                 "compose.j2": "compose_prompt", "repair.j2": "repair_prompt",
                 "refine.j2": "refine_prompt"}


def edit_label(name: str) -> str:
    """How errors name a template a run replaced: its context field and the file it replaces."""
    return f"{PROMPT_FIELDS[name]} (this run's {name})"


def _prompt_field(file: str, *nodes: str) -> Any:
    """A prompt Studio shows on its nodes for editing (`langgraph_type: prompt`)."""
    return Field(
        description=f"A Jinja template that replaces prompts/{file} for this run, with the same "
        "variables; empty uses the prompt folder's file.",
        json_schema_extra={"langgraph_nodes": list(nodes), "langgraph_type": "prompt"},
    )


# The musical controls, as `tools.abc.controls` reads them; the checker verifies each.
MUSIC_FIELDS = ("bars", "seconds", "tempo", "key", "meter", "voices", "instruments")


def _music_field(description: str, **bounds: Any) -> Any:
    """A musical control: optional, in the "music" group, its bounds in the schema."""
    return Field(description=description + " Empty leaves it to the model.",
                 json_schema_extra={"group": "music"}, **bounds)


def _read(settings: Settings, name: str) -> Any:
    value = getattr(settings, SETTING_FOR[name])
    return str(value or "") if name == "prompts_dir" else value


def _setting(name: str) -> Callable[[], Any]:
    """A default read from the settings when the context is made, not when this module loads."""
    return lambda: _read(get_settings(), name)


@dataclass(kw_only=True)
class Context:
    """Per-run settings; a field left out takes its IMG2MUSIC_* setting."""

    vlm_base_url: Annotated[str, Field(
        description="OpenAI-compatible endpoint of the vision-language model (vLLM, a hosted "
        "API, Ollama).",
    )] = field(default_factory=_setting("vlm_base_url"))
    vlm_model: Annotated[str, Field(
        description="Model the endpoint serves (Keye-VL-8B by default).",
    )] = field(default_factory=_setting("vlm_model"))
    temperature: Annotated[float, Field(
        description="Sampling temperature; Keye recommends 0.6.",
    )] = field(default_factory=_setting("temperature"))
    top_p: Annotated[float, Field(
        description="Nucleus sampling; Keye recommends 0.95.",
    )] = field(default_factory=_setting("top_p"))
    top_k: Annotated[int, Field(
        description="Top-k sampling, sent to vLLM endpoints only; Keye recommends 20.",
    )] = field(default_factory=_setting("top_k"))
    max_tokens: Annotated[int, Field(
        description="Most tokens the model may write per call.",
    )] = field(default_factory=_setting("max_tokens"))
    thinking: Annotated[bool, Field(
        description="Keye's think mode (/think) when composing; other models get no switch.",
    )] = field(default_factory=_setting("thinking"))
    grammar: Annotated[GrammarMode, Field(
        description="Constrain each answer with the ABC grammar while the model writes it: auto "
        "(where the backend applies it), on or off.",
    )] = field(default_factory=_setting("grammar"))
    rag: Annotated[bool, Field(
        description="Retrieve real tunes as examples for the compose prompt.",
    )] = True
    see_image: Annotated[bool, Field(
        description="The composer sees the image; off, it composes from the description alone "
        "(the caption-only baseline).",
    )] = True
    rag_k: Annotated[int, Field(
        description="How many examples to retrieve.",
    )] = field(default_factory=_setting("rag_k"))
    fusion: Annotated[Fusion, Field(
        description="How image and description similarities combine: rrf or weighted.",
    )] = field(default_factory=_setting("fusion"))
    repairs: Annotated[int, Field(
        description="Grammar-repair attempts when a tune fails parse-check.",
    )] = field(default_factory=_setting("repairs"))
    refine: Annotated[bool, Field(
        description="Send the MusPy metrics back so the model can refine its tune.",
    )] = True
    refine_rounds: Annotated[int, Field(
        description="Refinement rounds after the first valid tune.",
    )] = field(default_factory=_setting("refine_rounds"))
    explain: Annotated[ExplainMode, Field(
        description="Image explanation: attention (local model), clip (patch relevance) or none.",
    )] = field(default_factory=_setting("explain"))
    seed: Annotated[int | None, Field(
        description="Seed of this run's sampling: the same seed and settings give the same tune "
        "with a deterministic model; empty chooses one, which the report records.",
        ge=0, le=MAX_SEED,
    )] = field(default_factory=_setting("seed"))
    bars: Annotated[int | None, _music_field(
        f"Length in bars (each voice, as written); the tune passes within "
        f"{BAR_TOLERANCE:.0%} (at least one bar).", ge=MIN_BARS, le=MAX_BARS)] = None
    seconds: Annotated[float | None, _music_field(
        f"Length in seconds when played, an alternative to bars; the tune passes within "
        f"{SECONDS_TOLERANCE:.0%} (at least {MIN_SECONDS_TOLERANCE:g} s).",
        ge=MIN_SECONDS, le=MAX_SECONDS)] = None
    tempo: Annotated[int | None, _music_field(
        "Tempo in beats a minute of the meter's beat (a dotted quarter in 6/8, a half note in "
        f"2/2 and C|, else the meter's note value); the tune passes within "
        f"{TEMPO_TOLERANCE_BPM}.",
        ge=MIN_TEMPO, le=MAX_TEMPO)] = None
    key: Annotated[str | None, _music_field(
        "Key and mode as you would write it: 'D minor', 'Dm', 'F# dorian', 'Bb major', 'Eb'.",
    )] = None
    meter: Annotated[str | None, _music_field(
        "Meter: '3/4', '6/8', '2+3/8', 'C' (common time) or 'C|' (cut time).")] = None
    voices: Annotated[int | None, _music_field(
        "Number of voices (parts); an ensemble in instruments implies it.",
        ge=MIN_VOICES, le=MAX_VOICES)] = None
    instruments: Annotated[str | None, _music_field(
        "An ensemble (piano, string quartet, string trio, piano trio, folk band, wind "
        "quintet, brass quintet, jazz combo, choir, orchestra, …) or one General MIDI "
        "instrument per voice, by name or program 0-127: 'violin, violin, viola, cello' or "
        "'40,40,41,42'.")] = None
    prompts_dir: Annotated[str, Field(
        description="A prompt folder of your own; empty for the shipped prompts.")] = field(
        default_factory=_setting("prompts_dir"))
    system_prompt: Annotated[str, _prompt_field("system.j2", "describe", "compose")] = ""
    describe_prompt: Annotated[str, _prompt_field("describe.j2", "describe")] = ""
    compose_prompt: Annotated[str, _prompt_field("compose.j2", "compose")] = ""
    repair_prompt: Annotated[str, _prompt_field("repair.j2", "compose")] = ""
    refine_prompt: Annotated[str, _prompt_field("refine.j2", "compose")] = ""

    def __post_init__(self) -> None:
        """Every run has a seed: one is chosen here when none was given, so the report can
        name it. A context made from a request (LangGraph's API builds `Context(**context)`)
        keeps the operator's endpoint, model and prompt folder; `from_settings` is the
        operator's door."""
        if self.seed is None:
            self.seed = random.randint(0, MAX_SEED)
        self.controls()  # a control that cannot be read ends the run before it starts
        if _FROM_OPERATOR.get():
            return
        settings = get_settings()
        if settings.allow_run_overrides:
            return
        changed = [name for name in OPERATOR_FIELDS
                   if (getattr(self, name) or "") != (_read(settings, name) or "")]
        if changed:
            raise RunOverrideRefused(
                f"a run may not set {', '.join(changed)}: the operator's settings decide where "
                "the model lives and which files are read (IMG2MUSIC_ALLOW_RUN_OVERRIDES=true "
                "allows it)")

    def controls(self) -> Controls:
        """What this run asks of its tune, spelled as ABC; raises `ControlError` (one line that
        names the field) for a value that cannot be read."""
        return read_controls(**{name: getattr(self, name) for name in MUSIC_FIELDS})

    def call_seed(self, position: int) -> int:
        """The seed of this run's model call at `position` (0 the description, then one per
        compose attempt): each call samples differently, so a repair is not the first answer
        again, yet the whole run comes back from the run's seed alone."""
        digest = hashlib.blake2b(f"{self.seed}/{position}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") & MAX_SEED

    def take_seed(self, take: int) -> int:
        """The seed of take `take` (0 the first) of a run of several takes: the first take is
        the run's own seed, so it is the tune a run of one take gives; each other take gets
        its own, derived from the run's seed, so the same seed gives the same takes."""
        if take == 0:
            assert self.seed is not None, "every context has a seed"
            return self.seed
        digest = hashlib.blake2b(f"{self.seed}/take/{take}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") & MAX_SEED

    def prompt_edits(self) -> dict[str, str]:
        """Prompt templates this run replaces, by file name (edited in LangGraph Studio)."""
        return {name: getattr(self, attribute) for name, attribute in PROMPT_FIELDS.items()
                if getattr(self, attribute)}

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Context:
        """Context from explicit settings, then per-run overrides: the operator's door (Python,
        the CLI, eval), so the operator fields may change here."""
        values: dict[str, Any] = {name: _read(settings, name) for name in SETTING_FOR}
        known = {f.name for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if k in known and v is not None})
        with as_operator():
            return cls(**values)
