"""What each kind of OpenAI-compatible endpoint understands, and which kind an endpoint is.

Every chat endpoint takes OpenAI's standard fields; beyond them they differ. vLLM reads `top_k`
and `structured_outputs` at the top level of the request; OpenAI's API answers 400 to any field
it does not know and caps replies with `max_completion_tokens`; Ollama's OpenAI route reads
`max_tokens` and silently drops what it does not know. A profile says which of these an
endpoint gets. A call's `seed` is one of OpenAI's standard fields, which vLLM, OpenAI, Ollama
and the other local servers all read, so every profile sends it. `auto` asks the endpoint once
per process (per URL): its host, the `owned_by` of its `/models` list, then Ollama's
`/api/version` and vLLM's `/version` routes.

An endpoint that still refuses a parameter (a 400 or 422 naming it) is sent the standard parameters
only from then on; what it refused is remembered here per endpoint and model, so later calls do
not pay for the refusal again and every run's report can say what was left out.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from img2music.settings import ProfileSetting

logger = logging.getLogger(__name__)

ProfileName = Literal["vllm", "openai", "ollama", "generic"]
TokenLimit = Literal["max_completion_tokens", "max_tokens"]
GrammarRoute = Literal["local", "structured_outputs"]
"""How the ABC grammar reaches the model: xgrammar in this process, or vLLM's request field."""
PROBE_TIMEOUT_S = 5.0
MB = 1_000_000
OWNERS: dict[str, ProfileName] = {
    "vllm": "vllm", "openai": "openai", "system": "openai", "openai-internal": "openai",
    "openai-dev": "openai", "library": "ollama",  # Ollama's namespace of its own models
}
"""The `owned_by` that a server's `/models` entries carry, and the kind of server it means."""
VERSION_ROUTES: tuple[tuple[str, ProfileName], ...] = (
    ("/api/version", "ollama"), ("/version", "vllm"))
"""Routes at the server's root that answer `{"version": …}`, and whose they are."""
SAMPLING = frozenset({"temperature", "top_p"})
"""A model that refuses one of these (OpenAI's reasoning models) takes only its defaults."""
_VERSION = re.compile(r"[\w.+-]{1,40}")  # what a version route's answer may put in a report
_REFUSAL_WORDS = re.compile(
    r"unrecogni[sz]ed|unsupported|not supported|unknown|not permitted|not allowed|"
    r"extra (?:fields|inputs)|invalid (?:field|argument|parameter)", re.IGNORECASE)


@dataclass(frozen=True)
class Profile:
    """What one kind of endpoint understands beyond OpenAI's standard chat fields."""

    name: ProfileName
    top_k: bool  # vLLM's top-k sampling field
    structured_outputs: bool  # vLLM's `structured_outputs` field (constrained decoding)
    token_limit: TokenLimit  # the field that caps a reply's length
    max_image_bytes: int  # the longest image data URL the provider takes

    def extra_body(self, *, top_k: int | None) -> dict[str, Any]:
        """The fields beyond OpenAI's that every request to such an endpoint carries."""
        return {"top_k": top_k} if self.top_k and top_k is not None else {}


PROFILES: dict[ProfileName, Profile] = {
    # vLLM takes any size; 20 MB keeps a request to it as small as OpenAI's limit allows.
    "vllm": Profile("vllm", top_k=True, structured_outputs=True,
                    token_limit="max_completion_tokens", max_image_bytes=20 * MB),
    # OpenAI: 20 MB per image; `max_tokens` is refused by its reasoning models.
    "openai": Profile("openai", top_k=False, structured_outputs=False,
                      token_limit="max_completion_tokens", max_image_bytes=20 * MB),
    # Ollama's route reads `max_tokens` (into num_predict) and ignores `max_completion_tokens`.
    "ollama": Profile("ollama", top_k=False, structured_outputs=False, token_limit="max_tokens",
                      max_image_bytes=20 * MB),
    # Anything else (LM Studio, llama.cpp, hosted APIs): the field every one of them reads,
    # and the strictest common image limit (4 MB for a base64 image at some hosts).
    "generic": Profile("generic", top_k=False, structured_outputs=False,
                       token_limit="max_tokens", max_image_bytes=4 * MB),
}


def grammar_plan(*, grammar: str, backend: str,
                 profile: Profile | None) -> tuple[GrammarRoute | None, str]:
    """Where the ABC grammar goes for these settings, and why, in one line (for `doctor`).

    `auto` applies it where it is understood: the local backend (xgrammar) and an endpoint
    whose profile reads vLLM's structured outputs; `on` sends it to any endpoint too (one that
    refuses the field is asked again without it, and the run's report says so); `off` never.
    Think mode needs nothing more: the grammar itself leaves the <think> block free.
    """
    if grammar == "off":
        return None, "not applied (IMG2MUSIC_VLM_GRAMMAR=off)"
    if backend == "local":
        return "local", "applied by the local backend with xgrammar"
    if profile is not None and profile.structured_outputs:
        return "structured_outputs", "sent as structured_outputs, which vLLM applies"
    kind = f"{profile.name} endpoints" if profile is not None else "other endpoints"
    if grammar == "on":
        return "structured_outputs", (f"sent as structured_outputs (IMG2MUSIC_VLM_GRAMMAR=on), "
                                      f"which {kind} may ignore or refuse; an answer that does "
                                      "not match it is not counted as constrained")
    return None, (f"not sent: {kind} do not read vLLM's structured outputs "
                  "(IMG2MUSIC_VLM_GRAMMAR=on sends it anyway)")


@dataclass(frozen=True)
class Detection:
    """The profile an endpoint gets, and why (for logs, `doctor` and reports)."""

    profile: Profile
    reason: str


def profile_for(url: str, *, api_key: str, choice: ProfileSetting,
                setting: str = "IMG2MUSIC_VLM_PROFILE") -> Detection:
    """The profile for the endpoint at `url`: the one chosen, or (`auto`) the one it shows.

    Detection asks the endpoint once per process; an endpoint that does not answer at all is
    given `generic` for now and asked again next time (it may be starting).
    """
    if choice != "auto":
        return Detection(PROFILES[choice], f"{setting}={choice}")
    key = url.rstrip("/")
    known = known_profile(key, choice=choice)
    if known is not None:
        return known
    with _LOCK:
        asking = _ASKING.setdefault(key, threading.Lock())
    with asking:  # one probe per endpoint, however many runs start at once
        known = known_profile(key, choice=choice)
        if known is not None:
            return known
        detection, answered = _detect(key, api_key)
        if answered:
            with _LOCK:
                _DETECTED[key] = detection
            logger.info("the endpoint %s is %s (%s)", key, detection.profile.name,
                        detection.reason)
        return detection


def known_profile(url: str, *, choice: ProfileSetting,
                  setting: str = "IMG2MUSIC_VLM_PROFILE") -> Detection | None:
    """The profile already chosen for `url`, without asking the endpoint; None if not yet."""
    if choice != "auto":
        return Detection(PROFILES[choice], f"{setting}={choice}")
    with _LOCK:
        return _DETECTED.get(url.rstrip("/"))


def list_models(url: str, *, api_key: str,
                timeout: float = PROBE_TIMEOUT_S) -> list[dict[str, Any]]:
    """The endpoint's `GET /models` entries.

    Raises `httpx.TransportError` when nothing answers, `httpx.HTTPStatusError` on an error
    status, and `ValueError` when the answer is not a model list.
    """
    response = httpx.get(url.rstrip("/") + "/models", timeout=timeout,
                         headers={"Authorization": f"Bearer {api_key}"})
    response.raise_for_status()
    data = response.json().get("data")
    if not isinstance(data, list):
        raise ValueError("the answer has no `data` list")
    return [entry for entry in data if isinstance(entry, dict)]


_LOCK = threading.Lock()  # guards the tables; held for lookups only
_ASKING: dict[str, threading.Lock] = {}  # per endpoint, held while it is asked
_DETECTED: dict[str, Detection] = {}


def _detect(url: str, api_key: str) -> tuple[Detection, bool]:
    """The profile the endpoint shows, and whether it answered at all."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "api.openai.com" or host.endswith(".openai.azure.com"):
        return Detection(PROFILES["openai"], f"the host {host}"), True
    try:
        owners = {str(entry.get("owned_by", "")) for entry in list_models(url, api_key=api_key)}
    except httpx.TransportError as error:
        return Detection(PROFILES["generic"], f"no answer yet ({type(error).__name__})"), False
    except (httpx.HTTPStatusError, ValueError, AttributeError):
        owners = set()
    for owner in sorted(owners):
        name = OWNERS.get(owner)
        if name is not None:
            return Detection(PROFILES[name], f"{url}/models says owned_by {owner!r}"), True
    root = f"{parts.scheme}://{parts.netloc}"
    for route, name in VERSION_ROUTES:
        version = _version(root + route, api_key)
        if version is not None:
            return Detection(PROFILES[name], f"{root}{route} answered version {version}"), True
    return Detection(PROFILES["generic"], "nothing it answered named its kind"), True


STRUCTURED_OUTPUTS_SINCE = (0, 10, 2)
"""The first vLLM that reads `structured_outputs`; older ones read `guided_grammar` and ignore
fields they do not know (vLLM 0.12 removed `guided_grammar`)."""


def vllm_version(url: str, *, api_key: str) -> tuple[int, ...] | None:
    """The release of the vLLM server whose API is at `url`, from its `/version` route; None
    when it does not say."""
    parts = urlsplit(url.rstrip("/"))
    version = _version(f"{parts.scheme}://{parts.netloc}/version", api_key)
    numbers = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return tuple(int(part or 0) for part in numbers.groups()) if numbers else None


def _version(url: str, api_key: str) -> str | None:
    """The `version` a server's version route answers (Ollama's and vLLM's), or None."""
    try:
        response = httpx.get(url, timeout=PROBE_TIMEOUT_S,
                             headers={"Authorization": f"Bearer {api_key}"})
        version = response.json().get("version") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) and _VERSION.fullmatch(version) else None


@dataclass(frozen=True)
class Refusal:
    """What an endpoint refused for one model: it gets the standard parameters only, less
    `dropped`; `warnings` say so, one line per refusal."""

    dropped: frozenset[str]
    warnings: tuple[str, ...]


def refusal_for(url: str, model: str) -> Refusal | None:
    with _LOCK:
        return _REFUSED.get((url.rstrip("/"), model))


def record_refusal(url: str, model: str, dropped: Iterable[str], warning: str) -> bool:
    """Remember that the endpoint refused a parameter: standard ones only, less `dropped`.
    False when that was known already (a concurrent call learned it first)."""
    key = (url.rstrip("/"), model)
    with _LOCK:
        known = _REFUSED.get(key)
        if known is not None and known.dropped >= frozenset(dropped):
            return False
        before = known or Refusal(frozenset(), ())
        _REFUSED[key] = Refusal(before.dropped | frozenset(dropped), (*before.warnings, warning))
        return True


_REFUSED: dict[tuple[str, str], Refusal] = {}


def refused_parameters(error_text: str, *, extra: Iterable[str],
                       standard: Iterable[str]) -> frozenset[str]:
    """The parameters an error's text names among those sent: any extra one it names, and a
    standard one only when the text says it is not supported (a value that is merely too
    large, such as a token limit past the context, is not a refusal)."""
    named = {name for name in extra if _names(error_text, name)}
    if _REFUSAL_WORDS.search(error_text):
        named |= {name for name in standard if _names(error_text, name)}
    return frozenset(named)


def _names(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text) is not None
