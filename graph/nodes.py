"""The graph's nodes: each reads the state and the run's context and returns what it changes.

How a node reaches a model or the index is a keyword argument (`model_for`, `retriever_for`),
bound by `build_graph`; the defaults reach the configured endpoint and index, tests bind
scripted models.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

from langchain_core.language_models import BaseChatModel
from langgraph.errors import GraphBubbleUp
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from img2music.graph.context import Context, edit_label
from img2music.graph.explain import image_explanation
from img2music.graph.feedback import metric_feedback
from img2music.graph.models import (
    AnswerConstraint,
    ModelReply,
    acall_model,
    answer_constraint,
    chat_model,
    prompt_switch,
    to_langchain,
)
from img2music.graph.state import (
    Attempt,
    AttemptKind,
    Check,
    ControlVerdict,
    Explanation,
    Message,
    Metrics,
    Output,
    State,
    Take,
    TakesState,
    TakeState,
    replaces,
    rounds_and_repairs,
    shared_by_takes,
)
from img2music.prompt_files import check_prompt_edits, render_prompt
from img2music.settings import Settings, VLMBackend, get_settings
from img2music.tools.abc.check import CompiledAbc, ParseCheck, compile_abc, midi_seconds
from img2music.tools.abc.close import close_cut_answer, fit_to_limits
from img2music.tools.abc.controls import (
    Controls,
    Verdict,
    control_faults,
    judge_tune,
    program_name,
)
from img2music.tools.abc.diagnostics import Diagnostic
from img2music.tools.abc.extract import Extraction, extract_abc, strip_reasoning
from img2music.tools.abc.repair import Repair, repair_abc
from img2music.tools.abc.voices import split_voices
from img2music.tools.images import image_from_data_url
from img2music.tools.metrics import TuneMetrics, evaluate_midi
from img2music.tools.render.midi import voice_tracks

logger = logging.getLogger(__name__)

ModelFor = Callable[[Context], BaseChatModel]
RetrieverFor = Callable[[Context], Any]
ComposeLoop = CompiledStateGraph[State, Context, State, State]
MAX_DESCRIPTION_CHARS = 2_000
MAX_RAW_CHARS = 50_000
MAX_BARS = 64
MAX_FAULTS_SHOWN = 12
EXAMPLES_TO_SPARE = 4  # fetched beyond k, in case some examples are not playable
_RETRIEVER_LOCK = threading.Lock()
_RETRIEVERS: dict[str, Any] = {}
NO_TUNE = ("your answer has no ABC tune: write the whole tune in an ```abc block, starting "
           "with X:1 and ending the header with K:")


async def describe(
    state: State, runtime: Runtime[Context], *, model_for: ModelFor = chat_model
) -> State:
    """The model looks at the image first; retrieval matches its words to real tunes.

    Prompts a run replaced are tried first, so a template that breaks the sandbox's rules ends
    the run before any model call.
    """
    context = runtime.context
    edits = context.prompt_edits()
    check_prompt_edits(edits, {name: edit_label(name) for name in edits})
    prompt = _render(context, "describe.j2", note=state.get("note", ""),
                     thinking=prompt_switch(False, context.vlm_model))
    messages = [_system(context), _image_message(state["image"], prompt)]
    reply = await acall_model(await _model(model_for, context), to_langchain(messages),
                              endpoint=context.vlm_base_url, seed=context.call_seed(0))
    description = strip_reasoning(reply.text)[:MAX_DESCRIPTION_CHARS]
    return {
        "description": description, "status": "running",
        "usage": _usage("describe", reply.input_tokens, reply.output_tokens),
        "timings": {"describe": reply.seconds},
    }


async def retrieve(
    state: State, runtime: Runtime[Context], *, retriever_for: RetrieverFor
) -> State:
    """The k real tunes whose captions best match both the image and its description (CLIP
    and the index work in a thread: the event loop serves other runs meanwhile)."""
    context = runtime.context
    started = time.perf_counter()

    def search() -> list[Any]:
        retriever = retriever_for(context)
        found = retriever.retrieve(
            image=image_from_data_url(state["image"]),
            description=state.get("description") or None,
            k=context.rag_k + EXAMPLES_TO_SPARE, fusion=context.rag_fusion,
        )
        return playable_examples(found, context.rag_k)

    examples = await asyncio.to_thread(search)
    return {"examples": [example.model_dump() for example in examples],
            "timings": {"retrieve": time.perf_counter() - started}}


def compile_and_judge(abc: str, context: Context, *, constrained: bool,
                      ) -> tuple[CompiledAbc, list[Verdict], list[Diagnostic]]:
    """A tune compiled and, if it plays, each control the run set, honoured or not: its header
    and bars from the scan, its playing time and each voice's program from its MIDI. All of it
    blocks, and one trip to a worker thread does it.

    A `constrained` tune (written under the run's grammar) can be stopped by nothing but the
    size limits: one over them alone is cut where the grammar can end it, within them, and a
    fault says so (the third item)."""
    compiled, cut = compile_abc(abc), []
    if constrained and not compiled.check.ok:
        fitted = fit_to_limits(context.tune_grammar(), compiled)
        if fitted is not None:
            compiled = fitted[0]
            cut = [Diagnostic(severity="fault", line=0, col=0, message=fitted[1])]
    controls = context.controls()
    if not controls.asked or compiled.midi is None or compiled.tune is None:
        return compiled, [], cut
    names = [voice.name for voice in split_voices(compiled.abc)]
    return compiled, judge_tune(controls, compiled.tune, seconds=midi_seconds(compiled.midi),
                                programs=voice_tracks(compiled.midi, names).programs), cut


def playable_examples(examples: list[Any], k: int) -> list[Any]:
    """The first k examples the checker finds no error in: a prompt teaches only ABC that plays
    (an index built with other rules, or an example cut to its token budget, may not)."""
    kept: list[Any] = []
    settings = get_settings().model_dump_json()
    for example in examples:
        if len(kept) == k:
            break
        error = _example_error(example.abc, settings)
        if error is None:
            kept.append(example)
        else:
            logger.info("example %s left out: %s", example.id, error)
    return kept


@lru_cache(maxsize=1_024)
def _example_error(abc: str, settings: str) -> str | None:
    """The checker's summary of an example it finds an error in (None: it plays), remembered
    for the process: the same examples come back run after run, and the verdict on a text only
    changes with the `settings` the checker reads (as JSON, the key of the cache)."""
    check = compile_abc(abc).check
    return None if check.ok else check.summary()


def default_retriever(context: Context, *, settings: Settings) -> Any:
    """The operator's index (`settings`, bound by `build_graph`), built on first use (the
    music21 corpus needs no download).

    One retriever serves every run with the same settings; the lock keeps concurrent runs from
    loading CLIP or opening Chroma twice at once (Chroma's bindings do not import safely in
    parallel).
    """
    key = settings.model_dump_json()  # secrets show as stars: the key holds none
    with _RETRIEVER_LOCK:
        if key not in _RETRIEVERS:
            _RETRIEVERS.clear()  # one index at a time: a process rarely changes its settings
            _RETRIEVERS[key] = _open_retriever(settings)
        return _RETRIEVERS[key]


def _open_retriever(settings: Settings) -> Any:
    from img2music.tools.retrieval.embedder import load_embedder
    from img2music.tools.retrieval.index import ensure_index
    from img2music.tools.retrieval.retriever import Retriever

    embedder = load_embedder(settings)
    if "music21" in settings.rag_source_list:
        ensure_index("music21", embedder, settings=settings)
    return Retriever(embedder, settings=settings)


def next_attempt(attempts: list[Attempt], best: int | None) -> tuple[AttemptKind, int]:
    """What the compose node does next, read off the attempts so far: once this round's tune
    has been measured, a refinement; before that, a repair of the latest tune."""
    if not attempts:
        return "compose", 0
    last = attempts[-1]
    measured = (best is not None and attempts[best]["round"] == last["round"]
                and attempts[best]["metrics"] is not None)
    return ("refine", last["round"] + 1) if measured else ("repair", last["round"])


async def compose(
    state: State, runtime: Runtime[Context], *, model_for: ModelFor = chat_model,
    backend: VLMBackend,
) -> State:
    """One model turn: the first tune, a repair, or a refinement, in one growing conversation.

    What stays the same (instructions, image, examples) comes first and only the new feedback
    is appended, so the model server's prefix cache serves the repeated part. Without
    `see_image` the composer gets the description alone (the caption-only baseline). The
    `backend` (the operator's IMG2MUSIC_VLM_BACKEND, bound by `build_graph`) says whether the
    grammar is masked locally or sent to the endpoint.
    """
    context = runtime.context
    attempts = state.get("attempts", [])
    best = state.get("best")
    kind, round_number = next_attempt(attempts, best)
    folder = context.prompts_dir or None
    thinking = prompt_switch(context.vlm_thinking, context.vlm_model)
    if kind == "compose":
        controls = context.controls()
        bar_range = controls.bar_range()
        prompt = _render(
            context, "compose.j2", description=state.get("description", ""),
            note=state.get("note", ""), examples=state.get("examples", []),
            max_bars=max(MAX_BARS, bar_range[1] if bar_range else 0),
            thinking=thinking, sees_image=context.see_image, asked=_asked(controls),
        )
        first: Message = (_image_message(state["image"], prompt) if context.see_image
                          else {"role": "user", "content": prompt})
        turns: list[Message] = [_system(context), first]
    elif kind == "repair":
        check = ParseCheck.model_validate(attempts[-1]["check"])
        turns = [{"role": "user", "content": _render(
            context, "repair.j2", errors=check.feedback(tier="error"),
            faults=check.feedback(tier="fault"), thinking=thinking)}]
    else:
        assert best is not None, "a refinement follows a measured tune"
        metrics = TuneMetrics.model_validate(attempts[best]["metrics"])
        standing = attempts[best]["abc"] if best != attempts[-1]["n"] else None
        turns = [{"role": "user", "content": _render(
            context, "refine.j2", round=round_number, thinking=thinking,
            sees_image=context.see_image, tune=(standing or "").rstrip(),
            feedback=metric_feedback(metrics, folder=folder),
            unmet="\n".join(f"- {verdict['control']}: {verdict['message']}"
                            for verdict in attempts[best].get("controls", [])
                            if not verdict["honoured"]))}]
    conversation = [*state.get("conversation", []), *turns]
    model, constraint = await asyncio.to_thread(_model_and_constraint, model_for, context,
                                                backend)
    reply = await acall_model(model, to_langchain(conversation), endpoint=context.vlm_base_url,
                              constraint=constraint, seed=context.call_seed(len(attempts) + 1))
    extraction, repaired, fixes = await read_answer(reply, context)
    attempt: Attempt = {
        "n": len(attempts), "round": round_number, "kind": kind,
        "raw": reply.text[:MAX_RAW_CHARS],
        "abc": repaired.abc if repaired else None, "motivation": extraction.motivation,
        "fixes": fixes, "notes": extraction.notes,
        "check": None, "midi": None, "metrics": None, "valid": False,
        "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
        "seconds": reply.seconds, "constrained": reply.constrained,
    }
    answer = _answer_turn(attempt)
    return {
        "conversation": [*turns, answer], "attempts": [attempt],
        "usage": _usage("compose", reply.input_tokens, reply.output_tokens),
        "timings": {"compose": reply.seconds},
    }


async def read_answer(reply: ModelReply,
                      context: Context) -> tuple[Extraction, Repair | None, list[str]]:
    """A compose call's answer read: its tune and motivation extracted, the tune mechanically
    repaired, and what was fixed. A constrained answer that the token limit cut is first closed
    where the run's grammar can end its tune (which extraction's guesses could take for prose),
    and the fixes say so first."""
    extraction = extract_abc(reply.text)
    abc, cut_off, closing = extraction.abc, extraction.cut_off, []
    if reply.constrained and (reply.finish_reason == "length" or reply.truncated):
        closed = await asyncio.to_thread(
            lambda: close_cut_answer(context.tune_grammar(), reply.text))
        if closed is not None:
            abc, cut_off, closing = closed.abc, False, [closed.note]
    repaired = repair_abc(abc, cut_off=cut_off) if abc else None
    return extraction, repaired, [*closing, *(repaired.fixes if repaired else [])]


async def parse_check(state: State, runtime: Runtime[Context]) -> State:
    """The checker's verdict on the latest tune; a playable tune with no more faults than the
    one the run stands on (and not the same tune) becomes the one it stands on.

    The attempt keeps the tune as the checker read it, without the directives the filter
    removed, so the tune the run delivers is one no program can be tricked by later. Each
    musical control the run set that a playable tune does not honour is one more fault.
    """
    started = time.perf_counter()
    attempts = state["attempts"]
    attempt = attempts[-1]
    abc = attempt["abc"]
    midi: str | None = None
    verdicts: list[Verdict] = []
    if abc is None:
        check = ParseCheck(ok=False, error_count=1, errors=[
            Diagnostic(severity="error", line=0, col=0, message=NO_TUNE)])
    else:
        compiled, verdicts, cut = await asyncio.to_thread(
            compile_and_judge, abc, runtime.context, constrained=bool(attempt.get("constrained")))
        abc, check = compiled.abc, compiled.check  # as the programs read it: filtered
        if compiled.midi is not None:
            midi = base64.b64encode(compiled.midi).decode("ascii")
            faults = [*cut, *control_faults(verdicts)]
            check = check.model_copy(update={"faults": [*faults, *check.faults],
                                             "fault_count": check.fault_count + len(faults)})
    checked: Attempt = {**attempt, "abc": abc, "check": cast(Check, check.model_dump()),
                        "midi": midi, "valid": check.ok,
                        "controls": [cast(ControlVerdict, v.model_dump()) for v in verdicts]}
    update: State = {
        "attempts": [checked],
        "timings": {"parse_check": time.perf_counter() - started},
    }
    best = state.get("best")
    if replaces(checked, attempts[best] if best is not None else None):
        update["best"] = attempt["n"]
    return update


async def evaluate(state: State) -> State:
    """The eight MusPy metrics of the tune the run now stands on, for the report and refining,
    measured on the MIDI parse-check compiled (a tune is compiled once)."""
    started = time.perf_counter()
    best = state.get("best")
    assert best is not None, "evaluate runs only once a tune is playable"
    attempt = state["attempts"][best]
    check = attempt["check"]
    assert attempt["midi"] is not None and check is not None, "a playable tune was compiled"
    metrics = await asyncio.to_thread(evaluate_midi, base64.b64decode(attempt["midi"]),
                                      bars=check["bars"], voices=check["voices"])
    return {"attempts": [{**attempt, "metrics": cast(Metrics, metrics.model_dump())}],
            "timings": {"evaluate": time.perf_counter() - started}}


async def explain(
    state: State, runtime: Runtime[Context], *, model_for: ModelFor = chat_model,
    settings: Settings,
) -> State:
    """The chosen tune, its motivation, what a musician would still correct, and what shaped
    it (the loop, the examples, and where in the image it came from). The run's context says
    which picture; the operator's `settings` (bound by `build_graph`) which CLIP and which
    local copy of the model draw it."""
    attempts = state["attempts"]
    best = state.get("best")
    assert best is not None, "explain follows a playable tune"
    chosen = attempts[best]
    check = chosen["check"]
    assert check is not None, "a chosen tune was checked"
    rounds, repairs = rounds_and_repairs(attempts)
    explanation: Explanation = {
        "method": runtime.context.explain,
        "chosen_attempt": best,
        "rounds": rounds,
        "repairs": repairs,
        "examples": [e["id"] for e in state.get("examples", [])],
    }
    started = time.perf_counter()
    try:
        picture = await asyncio.to_thread(_picture, state, best, runtime.context, model_for,
                                          settings)
        explanation = cast(Explanation, {**explanation, **picture})
    except Exception as error:  # the tune stands even when its picture cannot be drawn
        logger.warning("no image explanation: %s", error)
        explanation["note"] = f"no image explanation: {type(error).__name__}: {error}"
    faults = [Diagnostic.model_validate(fault).one_line()
              for fault in check["faults"][:MAX_FAULTS_SHOWN]]
    return {"status": "done", "final_abc": chosen["abc"], "motivation": chosen["motivation"],
            "faults": faults, "fault_count": check["fault_count"],
            "controls": chosen.get("controls", []),
            "explanation": explanation, "timings": {"explain": time.perf_counter() - started}}


async def finish(state: State) -> State:
    """The end of a run without a playable tune: why, from the last attempt's check."""
    attempts = state.get("attempts", [])
    last = attempts[-1] if attempts else None
    reason = "no valid tune within the limits"
    if last and last["check"]:
        reason += ": " + ParseCheck.model_validate(last["check"]).summary()
    return {"status": "failed", "failure": reason, "final_abc": None}


async def compose_take(
    state: TakeState, runtime: Runtime[Context], *, loop: ComposeLoop
) -> TakesState:
    """One take of a run of several: the compose loop (`graph.build_compose_loop`) from what the
    takes share, under the take's own seed, so it is the tune a run of one take with that seed
    gives. A take that fails ends alone, with the reason, and the other takes are kept."""
    context = runtime.context.for_take(state["take"])
    assert context.seed is not None, "every context has a seed"
    try:
        final = await loop.ainvoke(shared_by_takes(state), context=context)
    except GraphBubbleUp:
        raise  # LangGraph's own signals (an interrupt, a drain) are not a take's failure
    except Exception as error:  # one take's outage must not lose the others' tunes
        logger.warning("take %d failed", state["take"] + 1, exc_info=error)
        final = {"status": "failed", "failure": f"{type(error).__name__}: {error}",
                 "final_abc": None}
    take: Take = {"take": state["take"] + 1, "seed": context.seed}
    take.update({key: final[key] for key in Output.__annotations__ if key in final})  # type: ignore[typeddict-item]
    return {"candidates": [take], "usage": final.get("usage", {}),
            "timings": final.get("timings", {})}


def _asked(controls: Controls) -> dict[str, Any] | None:
    """What the run asks of its tune, as the compose prompt states it (None: nothing)."""
    if not controls.asked:
        return None
    return {
        "bars": controls.bars,
        "seconds": f"{controls.seconds:g}" if controls.seconds is not None else None,
        "seconds_bars": controls.bars_for_seconds(),
        "tempo": controls.tempo, "tempo_field": controls.tempo_field(),
        "meter": controls.meter,
        "key": controls.key.abc if controls.key else None,
        "key_name": controls.key.name if controls.key else None,
        "voices": controls.voices,
        "instruments": [{"voice": number, "program": program, "name": program_name(program)}
                        for number, program in enumerate(controls.programs, start=1)],
    }


async def _model(model_for: ModelFor, context: Context) -> BaseChatModel:
    """The run's model, made in a thread: the first use of an endpoint asks it what it is, and
    the local backend loads its weights, neither of which may hold up the event loop."""
    return await asyncio.to_thread(model_for, context)


def _model_and_constraint(
    model_for: ModelFor, context: Context, backend: VLMBackend
) -> tuple[BaseChatModel, AnswerConstraint | None]:
    """The run's model (see `_model`) and the grammar its answer is held to, read from its file
    once per process: both may block, and one trip to a worker thread does both."""
    model = model_for(context)
    return model, answer_constraint(context, model, backend=backend)


def _picture(state: State, best: int, context: Context, model_for: ModelFor,
             settings: Settings) -> dict[str, Any]:
    """The image explanation with the run's model (see `_model`), in one trip to a thread."""
    return image_explanation(state, best, context, model_for(context), settings)


def _system(context: Context) -> Message:
    return {"role": "system", "content": _render(context, "system.j2")}


def _render(context: Context, name: str, **variables: object) -> str:
    """A prompt from the run's folder, or the replacement the run was given (from Studio)."""
    edit = context.prompt_edits().get(name, "")
    return render_prompt(name, folder=context.prompts_dir or None, text=edit,
                         label=edit_label(name) if edit else "", **variables)


def _image_message(data_url: str, text: str) -> Message:
    """The image first, then the words: the part of the prompt that never changes."""
    return {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": text},
    ]}


def _answer_turn(attempt: Attempt) -> Message:
    """The model's answer as the conversation keeps it: reasoning dropped, the tune as checked."""
    if attempt["abc"] is None:
        return {"role": "assistant", "content": strip_reasoning(attempt["raw"])[:4_000]}
    text = f"```abc\n{attempt['abc'].rstrip()}\n```"
    if attempt["motivation"]:
        text += f"\nMotivation: {attempt['motivation']}"
    return {"role": "assistant", "content": text}


def _usage(node: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {node: {"calls": 1, "input_tokens": input_tokens, "output_tokens": output_tokens}}
