"""What the configured path needs and whether this machine has it: `doctor` and `/health`.

Each check names what it looked at, what it found, and the fix, so a new user knows the next
step. A check is `missing` only when the configured path cannot run without it; what merely
degrades a run (no SoundFont: no audio) or fixes itself on first use (an index built, weights
downloaded) is a `warning`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx

from img2music.graph.context import Context
from img2music.graph.profiles import (
    STRUCTURED_OUTPUTS_SINCE,
    grammar_plan,
    list_models,
    profile_for,
    vllm_version,
)
from img2music.pipeline.index_build import (
    FIRST_USE_SOURCE,
    IndexBuild,
    duration,
    measure_pace,
    progress_line,
)
from img2music.redaction import redact_url, scrub
from img2music.settings import Settings
from img2music.tools.abc.budget import BudgetError
from img2music.tools.programs import which

if TYPE_CHECKING:
    from img2music.tools.retrieval.index import CollectionInfo

logger = logging.getLogger(__name__)

Status = Literal["ok", "warning", "missing"]
INSTALL = "run ./scripts/install.sh (Debian packages and the Python environment)"
PYTHON_PACKAGES = {
    "music21": "music21", "muspy": "muspy", "torch": "torch", "open_clip": "open_clip_torch",
    "chromadb": "chromadb", "transformers": "transformers", "langgraph": "langgraph",
    "langchain_openai": "langchain-openai", "fastapi": "fastapi", "uvicorn": "uvicorn",
}
VLM_PROBE_TIMEOUT_S = 3.0
GET_A_MODEL = "img2music vlm serve on a GPU, a hosted API or a local server (see below)"
FIRST_RUN = """\
No model answered at {url} ({reason}).
img2music needs a vision-language model behind an OpenAI-compatible endpoint. Three ways to
get one:

1. vLLM on a machine with an NVIDIA GPU, serving Keye-VL-8B (the model img2music is tuned for):
     pip install 'img2music[vllm]'
     img2music vlm serve

2. A hosted vision API (OpenAI, Gemini, OpenRouter, Together, ...): set three variables, e.g.
     export IMG2MUSIC_VLM_BASE_URL=https://api.openai.com/v1
     export IMG2MUSIC_VLM_MODEL=gpt-4o-mini
     export IMG2MUSIC_VLM_API_KEY=sk-...

3. A local server such as Ollama, with a vision model:
     ollama pull qwen2.5vl:7b
     export IMG2MUSIC_VLM_BASE_URL=http://127.0.0.1:11434/v1
     export IMG2MUSIC_VLM_MODEL=qwen2.5vl:7b

`img2music doctor` then checks that it answers."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "missing"


def python_packages() -> Check:
    absent = [dist for module, dist in PYTHON_PACKAGES.items()
              if importlib.util.find_spec(module) is None]
    if absent:
        return Check("Python packages", "missing", "not installed: " + ", ".join(absent), INSTALL)
    return Check("Python packages", "ok", f"{len(PYTHON_PACKAGES)} core packages importable")


def abc_parser(settings: Settings) -> Check:
    found = which("abc2midi")
    if found:
        return Check("abc2midi", "ok", str(found))
    if settings.abc_backend == "abc2midi":
        return Check("abc2midi", "missing", "IMG2MUSIC_ABC_BACKEND=abc2midi but it is not "
                     "installed", "apt-get install abcmidi, or IMG2MUSIC_ABC_BACKEND=auto")
    return Check("abc2midi", "warning", "not installed: music21 parses instead (slower, less "
                 "strict)", "apt-get install abcmidi")


def renderers(settings: Settings) -> list[Check]:
    """Score, audio and compressed audio: a run without them still gives ABC and MIDI."""
    checks = []
    for program, gives, package in (("abcm2ps", "the score (SVG)", "abcm2ps"),
                                    ("fluidsynth", "audio (WAV)", "fluidsynth"),
                                    ("sox", "compressed audio (OGG)", "sox libsox-fmt-all")):
        found = which(program)
        checks.append(Check(program, "ok", str(found)) if found else Check(
            program, "warning", f"not installed: no {gives}", f"apt-get install {package}"))
    soundfont = settings.find_soundfont()
    checks.append(Check("SoundFont", "ok", str(soundfont)) if soundfont else Check(
        "SoundFont", "warning", "no General MIDI SoundFont: no audio",
        "apt-get install timgm6mb-soundfont, or set IMG2MUSIC_SOUNDFONT"))
    return checks


def clip_weights(settings: Settings) -> Check:
    """Whether the CLIP weights are here, without loading them (that takes seconds)."""
    name = f"CLIP {settings.clip_model}"
    pretrained = settings.clip_pretrained
    if pretrained.lower() == "none":
        return Check(name, "ok", "random weights (offline mode: retrieval has no meaning)",
                     "set IMG2MUSIC_CLIP_PRETRAINED to an open_clip tag for real retrieval")
    if Path(pretrained).expanduser().is_file():
        return Check(name, "ok", f"checkpoint {pretrained}")
    import open_clip

    if not open_clip.is_pretrained_cfg(settings.clip_model, pretrained):
        return Check(name, "missing", f"{pretrained!r} is neither an open_clip tag of "
                     f"{settings.clip_model} nor a file", "see `open_clip.list_pretrained()`")
    hub = str(open_clip.get_pretrained_cfg(settings.clip_model, pretrained).get("hf_hub", ""))
    if hub and _in_hub_cache(hub.strip("/"), ("open_clip_model.safetensors",
                                              "open_clip_pytorch_model.bin")):
        return Check(name, "ok", f"{pretrained} weights cached")
    return Check(name, "warning", f"{pretrained} weights not downloaded yet: they download on "
                 "first use (needs the network once)", "img2music index build (fetches them and "
                 "builds the index)")


def index(settings: Settings, *, build: IndexBuild | None = None,
          estimate: bool = False) -> list[Check]:
    """A retrieval index per configured source. music21's is built on first use: until a whole
    build has finished it is a warning that says how far a build is (this process's `build`,
    or another process's, seen by its lock and what it stored) and, with `estimate`, how long a
    whole build takes here."""
    from img2music.tools.retrieval.index import index_info

    if settings.rag_k == 0:
        return [Check("index", "ok", "retrieval is off (IMG2MUSIC_RAG_K=0)")]
    where = settings.chroma_url or str(settings.index_dir)
    try:
        collections = index_info(settings)
    except Exception as error:  # a Chroma server that is down, or a damaged folder
        return [Check("index", "missing", f"cannot open {where}: {error}",
                      "start the Chroma server, or unset IMG2MUSIC_CHROMA_URL")]
    checks = []
    for source in settings.rag_source_list:
        built = [c for c in collections if c.source == source and c.records]
        if source == FIRST_USE_SOURCE and not any(c.complete for c in built):
            checks.append(_first_use_index(settings, built, build, estimate))
        elif built:
            detail = "; ".join(f"{c.records:,} tunes, {c.embedder}" for c in built)
            checks.append(Check(f"index {source}", "ok", detail))
        else:
            checks.append(Check(f"index {source}", "missing", f"not built in {where}",
                                f"img2music index build --source {source} --path ..."))
    return checks


def _first_use_index(settings: Settings, built: list[CollectionInfo], build: IndexBuild | None,
                     estimate: bool) -> Check:
    """The first-use index while it is not complete: how far it is, and (for `doctor`) how long
    a whole build takes here."""
    from img2music.tools.corpus.ingest import count_tunes
    from img2music.tools.retrieval.index import writer_busy

    name = f"index {FIRST_USE_SOURCE}"
    if build is not None and build.state == "checking":
        return Check(name, "warning", "checking it (loading CLIP)")
    if build is not None and build.state == "building":
        progress = build.progress
        return Check(name, "warning", "building now: " + (
            progress_line(progress) if progress else "counting the tunes") + "; runs wait for it")
    if build is not None and build.state == "failed":
        return Check(name, "warning", f"the build at start failed ({build.error}); runs try "
                     "again", "img2music index build shows the whole error")
    stored = max((c.records for c in built), default=0)
    tunes = count_tunes(FIRST_USE_SOURCE, settings=settings) if estimate else None
    of_all = f" of {tunes:,}" if tunes else ""
    parts = [f"partly built: {stored:,}{of_all} tunes stored" if stored else "not built"]
    if writer_busy(settings):
        parts.append("another process is building it now")
    else:
        parts.append("it is built once, on first use")
    if tunes:
        parts.append(build_time(settings, tunes))
    return Check(name, "warning", "; ".join(parts), "img2music index build (or the first "
                 "compose, or serve) builds it")


def build_time(settings: Settings, tunes: int) -> str:
    """How long a whole build of the first-use index (`tunes` tunes) takes here, from a sample
    measured now; or why it cannot be measured yet (the CLIP weights are not downloaded). A
    partly built index takes less: its stored tunes are read again but not embedded."""
    model = f"CLIP {settings.clip_model} ({settings.clip_pretrained})"
    if clip_weights(settings).status != "ok":
        return f"its build time is measured once the {model} weights are downloaded"
    try:
        measured = measure_pace(settings)
    except Exception as error:  # the estimate is advice: never a reason for doctor to fail
        logger.warning("the index build time could not be measured: %s", error)
        return f"its build time could not be measured ({type(error).__name__})"
    return (f"a whole build takes about {duration(tunes * measured.seconds_per_tune)} here "
            f"with {model} (measured on {measured.sampled} tunes)")


def vlm_endpoint(settings: Settings) -> Check:
    """The endpoint answers `GET /models`, serves the configured model, and has a profile."""
    name = "VLM endpoint"
    if settings.vlm_backend == "local":
        return local_model(settings.vlm_model, "local VLM")
    url = settings.vlm_base_url.rstrip("/") + "/models"
    shown = redact_url(url)
    endpoint = redact_url(settings.vlm_base_url)
    key = settings.vlm_api_key.get_secret_value()
    try:
        served = [str(model.get("id")) for model in list_models(
            settings.vlm_base_url, api_key=key, timeout=VLM_PROBE_TIMEOUT_S)]
    except httpx.HTTPStatusError as error:
        return Check(name, "missing", f"{shown} answered {error.response.status_code}",
                     "check IMG2MUSIC_VLM_BASE_URL and IMG2MUSIC_VLM_API_KEY")
    except httpx.TransportError as error:
        return Check(name, "missing",
                     f"{shown}: nothing answers ({scrub(_no_answer(error), settings)})",
                     GET_A_MODEL)
    except (httpx.HTTPError, ValueError, AttributeError) as error:
        detail = f"{shown}: {type(error).__name__}: {scrub(str(error), settings)}"
        return Check(name, "missing", detail.strip(": "),
                     "check IMG2MUSIC_VLM_BASE_URL: it should end in /v1")
    if settings.vlm_model not in served:
        listed = ", ".join(served) or "no model"
        return Check(name, "missing", f"{endpoint} serves {listed}, not "
                     f"{settings.vlm_model}", "set IMG2MUSIC_VLM_MODEL to one of them, or serve it")
    detection = profile_for(settings.vlm_base_url, api_key=key, choice=settings.vlm_profile)
    return Check(name, "ok", f"{endpoint} serves {settings.vlm_model}; profile "
                 f"{detection.profile.name} ({detection.reason})")


def abc_grammar(settings: Settings, endpoint: Check) -> Check:
    """Whether the compose calls are written under the ABC grammar, and why (or why not)."""
    name = "ABC grammar"
    profile = None
    if settings.vlm_backend != "local" and settings.vlm_grammar != "off":
        if not endpoint.ok:
            return Check(name, "warning", "whether the endpoint constrains is known once it "
                         "answers", "see the VLM endpoint above")
        profile = profile_for(settings.vlm_base_url,
                              api_key=settings.vlm_api_key.get_secret_value(),
                              choice=settings.vlm_profile).profile
    via, why = grammar_plan(grammar=settings.vlm_grammar, backend=settings.vlm_backend,
                            profile=profile)
    if via is None:
        return Check(name, "ok", f"compose calls are not constrained: {why}")
    try:
        Context.from_settings(settings).answer_grammar()
    except BudgetError as error:
        return Check(name, "warning", f"compose calls are not constrained: {error}",
                     "raise IMG2MUSIC_VLM_MAX_TOKENS, or set IMG2MUSIC_VLM_GRAMMAR=off")
    why += f"; sized to {settings.vlm_max_tokens:,} tokens a call"
    if profile is not None and profile.name == "vllm":
        version = vllm_version(settings.vlm_base_url,
                               api_key=settings.vlm_api_key.get_secret_value())
        since = ".".join(map(str, STRUCTURED_OUTPUTS_SINCE))
        if version is not None and version < STRUCTURED_OUTPUTS_SINCE:
            return Check(name, "warning", f"compose calls are not constrained: vLLM "
                         f"{'.'.join(map(str, version))} ignores structured_outputs (before "
                         f"{since} it read a grammar as guided_grammar)",
                         f"upgrade vLLM to {since} or later (pip install -U 'img2music[vllm]'), "
                         "or set IMG2MUSIC_VLM_GRAMMAR=off")
        if version is None:
            why += f" (vLLM does not say its version; {since} or later reads the field)"
    return Check(name, "ok", f"compose calls are constrained: {why}")


def no_model_answers(settings: Settings) -> str | None:
    """The first-run help (the three ways to get a model) when nothing answers at the VLM
    endpoint: refused, no such host, timed out. None when something answers, whatever it
    says (`doctor` names the rest), or with the local backend."""
    if settings.vlm_backend == "local":
        return None
    try:
        list_models(settings.vlm_base_url, api_key=settings.vlm_api_key.get_secret_value(),
                    timeout=VLM_PROBE_TIMEOUT_S)
    except httpx.TransportError as error:
        return FIRST_RUN.format(url=redact_url(settings.vlm_base_url),
                                reason=scrub(_no_answer(error), settings))
    except (httpx.HTTPError, ValueError, AttributeError):
        pass  # something answered: `doctor` says what is wrong with it
    return None


def _no_answer(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"no answer within {VLM_PROBE_TIMEOUT_S:g} s"
    return f"{type(error).__name__}: {error}".strip(": ")


def attention_model(settings: Settings) -> Check | None:
    """Attention maps need a transformers copy of the VLM: the local backend or a set path."""
    if settings.explain != "attention":
        return None
    if settings.vlm_backend == "local":
        return Check("attention model", "ok", "the local VLM gives attention maps")
    if not settings.attention_model:
        return Check("attention model", "missing", "IMG2MUSIC_EXPLAIN=attention needs a local "
                     "copy of the VLM", "set IMG2MUSIC_ATTENTION_MODEL, or IMG2MUSIC_EXPLAIN=clip")
    return local_model(settings.attention_model, "attention model")


def local_model(model: str, name: str) -> Check:
    """A transformers model on disk or in the Hugging Face cache."""
    if Path(model).expanduser().is_dir():
        return Check(name, "ok", model)
    if _in_hub_cache(model, ("config.json",)):
        return Check(name, "ok", f"{model} (Hugging Face cache)")
    return Check(name, "missing", f"{model} is neither a folder nor in the Hugging Face cache",
                 f"huggingface-cli download {model}")


def _in_hub_cache(repo: str, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo, filename), str)
                   for filename in filenames)
    except ValueError:  # not a repository id
        return False


def health_checks(settings: Settings, build: IndexBuild | None = None) -> list[Check]:
    """What a serving process depends on between runs: the model, the index (and the build
    this process runs), the renderers."""
    return [vlm_endpoint(settings), abc_parser(settings), *index(settings, build=build),
            *renderers(settings)]


def doctor_checks(settings: Settings) -> list[Check]:
    """Everything the configured path needs, from packages to the model."""
    uses_clip = settings.rag_k > 0 or settings.explain == "clip"
    checks = [python_packages(), abc_parser(settings), *renderers(settings)]
    if uses_clip:
        checks.append(clip_weights(settings))
    checks.extend(index(settings, estimate=True))
    endpoint = vlm_endpoint(settings)
    checks += [endpoint, abc_grammar(settings, endpoint)]
    attention = attention_model(settings)
    if attention is not None:
        checks.append(attention)
    return checks
