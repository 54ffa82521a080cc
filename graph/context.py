"""The settings a user changes per run; LangGraph Studio shows these fields with their help."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
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
from img2music.tools.abc.budget import BudgetError, sized_answer_grammar
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
    grammar_rules,
    read_controls,
)
from img2music.tools.abc.grammar import answer_grammar, tune_grammar

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


def _music_field(description: str, title: str, **bounds: Any) -> Any:
    """A musical control: optional, in the "music" group, its bounds in the schema."""
    return Field(description=description + " Empty leaves it to the model.", title=title,
                 json_schema_extra={"group": "music"}, **bounds)


def setting_value(settings: Settings, name: str) -> Any:
    """The setting IMG2MUSIC_<NAME> as a context field holds it (a folder as text)."""
    value = getattr(settings, name)
    return str(value or "") if name == "prompts_dir" else value


def _setting(name: str) -> Callable[[], Any]:
    """A default read from the settings when the context is made, not when this module loads."""
    return lambda: setting_value(get_settings(), name)


def _run_setting(name: str, description: str, **extra: Any) -> Any:
    """The declaration of a context field that is also the setting IMG2MUSIC_<NAME>: the
    field's own description (and title, for the page), the setting's bounds, so the bounds are
    written once, in `Settings`, and every door (CLI, HTTP, Studio) checks the same ones."""
    limits = {kind: getattr(item, kind) for item in Settings.model_fields[name].metadata
              for kind in ("gt", "ge", "lt", "le") if hasattr(item, kind)}
    return Field(description=description, **limits, **extra)


@dataclass(kw_only=True)
class Context:
    """Per-run settings, each under one name everywhere: the field here (Studio), the setting
    IMG2MUSIC_<NAME> where there is one (its default), `compose --name-with-dashes`, the HTTP
    option `img2music.<name>` and the report's `settings.<name>`. The CLI flags, the HTTP
    options, the page's controls and docs/settings.md are derived from these declarations
    (`graph.options`): a field added here is offered everywhere, with its type, bounds,
    description and `title` (the page's label). Operator and prompt fields are not offered."""

    vlm_base_url: Annotated[str, Field(
        description="OpenAI-compatible endpoint of the vision-language model (vLLM, a hosted "
        "API, Ollama).",
    )] = field(default_factory=_setting("vlm_base_url"))
    vlm_model: Annotated[str, Field(
        description="Model the endpoint serves (Keye-VL-8B by default).",
    )] = field(default_factory=_setting("vlm_model"))
    vlm_temperature: Annotated[float, _run_setting(
        "vlm_temperature", "Sampling temperature; Keye recommends 0.6.", title="Temperature",
    )] = field(default_factory=_setting("vlm_temperature"))
    vlm_top_p: Annotated[float, _run_setting(
        "vlm_top_p", "Nucleus sampling; Keye recommends 0.95.", title="Top-p",
    )] = field(default_factory=_setting("vlm_top_p"))
    vlm_top_k: Annotated[int, _run_setting(
        "vlm_top_k", "Top-k sampling, sent to vLLM endpoints only; Keye recommends 20.",
        title="Top-k",
    )] = field(default_factory=_setting("vlm_top_k"))
    vlm_max_tokens: Annotated[int, _run_setting(
        "vlm_max_tokens", "Most tokens the model may write per call.", title="Most tokens a call",
    )] = field(default_factory=_setting("vlm_max_tokens"))
    vlm_thinking: Annotated[bool, _run_setting(
        "vlm_thinking", "Keye's think mode (/think) when composing; other models get no switch.",
        title="Think before composing",
    )] = field(default_factory=_setting("vlm_thinking"))
    vlm_grammar: Annotated[GrammarMode, _run_setting(
        "vlm_grammar", "Constrain each answer with the ABC grammar while the model writes it: "
        "auto (where the backend applies it), on or off.", title="ABC grammar",
    )] = field(default_factory=_setting("vlm_grammar"))
    rag: Annotated[bool, Field(
        description="Retrieve real tunes as examples for the compose prompt.",
        title="Learn from real tunes (RAG)",
    )] = True
    see_image: Annotated[bool, Field(
        description="The composer sees the image; off, it composes from the description alone "
        "(the caption-only baseline).", title="The composer sees the image",
    )] = True
    rag_k: Annotated[int, _run_setting(
        "rag_k", "How many examples to retrieve.", title="Examples to retrieve (k)",
    )] = field(default_factory=_setting("rag_k"))
    rag_fusion: Annotated[Fusion, _run_setting(
        "rag_fusion", "How image and description similarities combine: rrf or weighted.",
        title="Fusion of similarities",
    )] = field(default_factory=_setting("rag_fusion"))
    max_repairs: Annotated[int, _run_setting(
        "max_repairs", "Grammar-repair attempts when a tune fails parse-check.",
        title="Repairs per round",
    )] = field(default_factory=_setting("max_repairs"))
    refine: Annotated[bool, Field(
        description="Send the MusPy metrics back so the model can refine its tune.",
        title="Refine with the metrics",
    )] = True
    refine_rounds: Annotated[int, _run_setting(
        "refine_rounds", "Refinement rounds after the first valid tune.",
        title="Refinement rounds",
    )] = field(default_factory=_setting("refine_rounds"))
    explain: Annotated[ExplainMode, _run_setting(
        "explain", "Image explanation: attention (local model), clip (patch relevance) or none.",
        title="Explanation map",
    )] = field(default_factory=_setting("explain"))
    seed: Annotated[int | None, _run_setting(
        "seed", "Seed of this run's sampling: the same seed and settings give the same tune "
        "with a deterministic model; empty chooses one, which the report records.",
        title="Seed",
    )] = field(default_factory=_setting("seed"))
    bars: Annotated[int | None, _music_field(
        f"Length in bars (each voice, as written); the tune passes within "
        f"{BAR_TOLERANCE:.0%} (at least one bar).", "Length in bars",
        ge=MIN_BARS, le=MAX_BARS)] = None
    seconds: Annotated[float | None, _music_field(
        f"Length in seconds when played, an alternative to bars; the tune passes within "
        f"{SECONDS_TOLERANCE:.0%} (at least {MIN_SECONDS_TOLERANCE:g} s).",
        "Length in seconds", ge=MIN_SECONDS, le=MAX_SECONDS)] = None
    tempo: Annotated[int | None, _music_field(
        "Tempo in beats a minute of the meter's beat (a dotted quarter in 6/8, a half note in "
        f"2/2 and C|, else the meter's note value); the tune passes within "
        f"{TEMPO_TOLERANCE_BPM}.", "Tempo (BPM)",
        ge=MIN_TEMPO, le=MAX_TEMPO)] = None
    key: Annotated[str | None, _music_field(
        "Key and mode as you would write it: 'D minor', 'Dm', 'F# dorian', 'Bb major', 'Eb'.",
        "Key and mode")] = None
    meter: Annotated[str | None, _music_field(
        "Meter: '3/4', '6/8', '2+3/8', 'C' (common time) or 'C|' (cut time).", "Meter")] = None
    voices: Annotated[int | None, _music_field(
        "Number of voices (parts); an ensemble in instruments implies it.", "Voices",
        ge=MIN_VOICES, le=MAX_VOICES)] = None
    instruments: Annotated[str | None, _music_field(
        "An ensemble (piano, string quartet, string trio, piano trio, folk band, wind "
        "quintet, brass quintet, jazz combo, choir, orchestra, …) or one General MIDI "
        "instrument per voice, by name or program 0-127: 'violin, violin, viola, cello' or "
        "'40,40,41,42'.", "Instruments")] = None
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
        if self.vlm_grammar == "on":  # as does a budget too small for the grammar it asks for
            try:
                self.answer_grammar()
            except BudgetError as error:
                raise BudgetError(f"vlm_max_tokens: {error}") from None
        if _FROM_OPERATOR.get():
            return
        settings = get_settings()
        if settings.allow_run_overrides:
            return
        changed = [name for name in OPERATOR_FIELDS
                   if (getattr(self, name) or "") != (setting_value(settings, name) or "")]
        if changed:
            raise RunOverrideRefused(
                f"a run may not set {', '.join(changed)}: the operator's settings decide where "
                "the model lives and which files are read (IMG2MUSIC_ALLOW_RUN_OVERRIDES=true "
                "allows it)")

    def controls(self) -> Controls:
        """What this run asks of its tune, spelled as ABC; raises `ControlError` (one line that
        names the field) for a value that cannot be read."""
        return read_controls(**{name: getattr(self, name) for name in MUSIC_FIELDS})

    def answer_grammar(self) -> str:
        """The ABC grammar of this run's answers, where one is applied: the run's fixed header
        values (key, meter, tempo, voices, programs) narrow it, and its token budget bounds what
        comes before the music (raises `BudgetError` for a budget too small for any tune)."""
        grammar = answer_grammar(grammar_rules(self.controls()), thinking=self.vlm_thinking)
        return sized_answer_grammar(grammar, self.vlm_max_tokens)

    def tune_grammar(self) -> str:
        """The grammar of one tune as this run's answers are held to it, unsized (what a
        constrained tune may hold, to close one that a limit cut short where it can end)."""
        return tune_grammar(grammar_rules(self.controls()))

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

    def for_take(self, take: int) -> Context:
        """This run's context for take `take` (0 the first): the same settings, the take's own
        seed. The run's context was checked when it was made, so its copy keeps its operator
        fields whoever made it."""
        with as_operator():
            return replace(self, seed=self.take_seed(take))

    def prompt_edits(self) -> dict[str, str]:
        """Prompt templates this run replaces, by file name (edited in LangGraph Studio)."""
        return {name: getattr(self, attribute) for name, attribute in PROMPT_FIELDS.items()
                if getattr(self, attribute)}

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Context:
        """Context from explicit settings, then per-run overrides (None keeps the setting): the
        operator's door (Python, the CLI, eval), so the operator fields may change here. A name
        that is no field is refused (with its new name, if it is a former one)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"not a run setting: {', '.join(map(renamed_hint, unknown))}")
        values: dict[str, Any] = {name: setting_value(settings, name) for name in known
                                  if name in Settings.model_fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        with as_operator():
            return cls(**values)


FORMER_NAMES = {"k": "rag_k", "repairs": "max_repairs", "fusion": "rag_fusion",
                "temperature": "vlm_temperature", "top_p": "vlm_top_p", "top_k": "vlm_top_k",
                "max_tokens": "vlm_max_tokens", "thinking": "vlm_thinking",
                "grammar": "vlm_grammar"}
"""Names run settings had before each got one name everywhere, and the name each has now."""


def renamed_hint(name: str) -> str:
    """A name that is no run setting, as an error names it: `k (now rag_k)`."""
    return f"{name} (now {FORMER_NAMES[name]})" if name in FORMER_NAMES else name
