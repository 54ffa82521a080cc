"""The OpenAI chat-completions protocol as img2music reads it: lenient in what it ignores,
strict in what it uses, and every refusal in OpenAI's error shape with one clear line."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Send

from img2music.graph.options import OptionRefused, checked_options, options_model
from img2music.settings import MAX_SEED, MAX_TAKES
from img2music.tools.images import BadDataUrl, DataUrlProblem, data_url_bytes

MODEL_ID = "img2music"
MAX_NOTE_CHARS = 1_000
DATA_URL_CODES: dict[DataUrlProblem, str] = {
    "not_a_data_url": "invalid_image_url", "damaged": "invalid_base64",
    "not_an_image": "invalid_image",
}
Body = TypeVar("Body", bound=BaseModel)
ErrorType = Literal["invalid_request_error", "authentication_error", "not_found_error",
                    "rate_limit_error", "server_error", "upstream_error", "timeout_error"]


class ApiError(Exception):
    """A refusal the client gets as `{"error": {...}}` with this status."""

    def __init__(self, status: int, message: str, *, type: ErrorType = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type, code, param)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


async def send_error(send: Send, error: ApiError) -> None:
    """An error answered from ASGI middleware, before any route runs."""
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ChatRequest(BaseModel):
    """The fields img2music honours; the rest of OpenAI's request is accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    n: int = Field(default=1, ge=1, le=MAX_TAKES)  # takes: one choice per take
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    # The run options, by their names, and `takes` (a request's, not a run's: each take is a
    # run of the graph).
    img2music: dict[str, Any] = Field(default_factory=dict)

    def context_overrides(self) -> dict[str, Any]:
        """Graph context fields this request sets; the rest keep the server's settings.

        The `img2music` object holds run options under their one name (`graph.options`: the
        same as the settings, the CLI's flags and the report's keys); OpenAI's own sampling
        fields set the same options, and the `img2music` object wins where both do. An unknown
        key is a 400 that names it (and a former name's new one), never silently ignored.
        """
        try:
            options = checked_options({name: value for name, value in self.img2music.items()
                                       if name != "takes"})
        except OptionRefused as error:
            where = f"img2music.{error.where}"
            known = error.where in options_model().model_fields
            raise ApiError(400, f"img2music.{error}", param=where,
                           code="invalid_value" if known else "unknown_option") from None
        standard = {"vlm_temperature": self.temperature, "vlm_top_p": self.top_p,
                    "vlm_max_tokens": self.max_completion_tokens or self.max_tokens,
                    "seed": self.seed}
        return {**{name: value for name, value in standard.items() if value is not None},
                **options}

    @property
    def takes(self) -> int:
        """Candidates to compose: `img2music.takes`, else OpenAI's `n`."""
        given = self.img2music.get("takes")
        if given is None:
            return self.n
        if isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= MAX_TAKES:
            raise ApiError(400, f"img2music.takes: candidates to compose at once, a whole number "
                           f"from 1 to {MAX_TAKES} (OpenAI's n says the same)",
                           param="img2music.takes", code="invalid_value")
        return given

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def parse_request(body: bytes) -> ChatRequest:
    """The request, or a 400 that names the first thing wrong with it."""
    request = parsed_body(ChatRequest, body)
    if request.model != MODEL_ID:
        raise ApiError(404, f"the model {request.model!r} does not exist; this server serves "
                       f"{MODEL_ID!r}", type="not_found_error", code="model_not_found",
                       param="model")
    request.context_overrides()  # its run options are refused now, before any work
    _ = request.takes  # and its takes
    return request


def parsed_body(model: type[Body], body: bytes) -> Body:
    """A JSON body as `model`, or a 400 that names the first thing wrong with it."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}", param=where,
                       code="invalid_value") from None


class ImageInput(BaseModel):
    """What the last user message carries: an image (bytes, or a URL to fetch) and a note."""

    data: bytes | None = None
    url: str | None = None
    note: str = ""


def image_input(request: ChatRequest) -> ImageInput:
    """The image and note of the last user message; earlier turns do not steer a composition."""
    users = [message for message in request.messages if message.get("role") == "user"]
    if not users:
        raise ApiError(400, "no user message: send the image in a user message",
                       param="messages", code="no_image")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise ApiError(400, "the user message's content must be text or a list of parts",
                       param="messages", code="invalid_value")
    texts = [str(part.get("text", "")) for part in parts
             if isinstance(part, dict) and part.get("type") == "text"]
    images = [part for part in parts if isinstance(part, dict) and part.get("type") == "image_url"]
    note = " ".join(text.strip() for text in texts if text.strip())
    if len(note) > MAX_NOTE_CHARS:
        raise ApiError(400, f"the text is {len(note):,} characters; at most {MAX_NOTE_CHARS:,} "
                       "are read as the note about the music", param="messages",
                       code="note_too_long")
    if not images:
        raise ApiError(400, "no image: the last user message needs an image_url part (a "
                       "base64 data URL)", param="messages", code="no_image")
    if len(images) > 1:
        raise ApiError(400, f"{len(images)} images: img2music composes for one image per "
                       "request", param="messages", code="too_many_images")
    reference = images[0].get("image_url")
    url = reference.get("url") if isinstance(reference, dict) else reference
    if not isinstance(url, str) or not url:
        raise ApiError(400, "the image_url part has no url", param="messages",
                       code="no_image")
    if url.lower().startswith(("http://", "https://")):
        return ImageInput(url=url, note=note)
    try:
        return ImageInput(data=data_url_bytes(url), note=note)
    except BadDataUrl as error:
        raise ApiError(400, f"the image_url cannot be used: {error}", param="messages",
                       code=DATA_URL_CODES[error.problem]) from None
