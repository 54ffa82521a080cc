"""A scripted OpenAI-compatible chat server on loopback that can be told to fail (test support).

It answers `GET /v1/models` and `POST /v1/chat/completions` (plain, and streamed as vLLM
streams), with the text a responder function returns, and records what it was sent. Its
dialect is the kind of server it behaves like, as far as img2music can tell them apart:

- `vllm`: models `owned_by: "vllm"`, a `/version` route, any extra field accepted;
- `openai`: OpenAI's API, models `owned_by: "system"`; any field OpenAI does not know is a 400
  with OpenAI's error body (`Unrecognized request argument supplied: top_k`);
- `ollama`: Ollama's OpenAI route, models `owned_by` their namespace (`library` for Ollama's
  own), an `/api/version` route at the root, unknown fields silently ignored (as Go's JSON
  decoding does), images only as base64 JPEG, PNG or WebP data URLs;
- `generic`: a server that says nothing about itself and accepts any field.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Dialect = Literal["vllm", "openai", "ollama", "generic"]
Responder = Callable[[dict[str, Any]], str]
PROMPT_TOKENS = 321  # what every answer reports as its prompt's size
STREAM_PIECE = 7  # characters per streamed chunk
OPENAI_FIELDS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
    "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options",
})
"""The request fields of OpenAI's chat completions API."""
OLLAMA_IMAGES = ("data:;base64,", *(f"data:image/{kind};base64,"
                                    for kind in ("jpeg", "jpg", "png", "webp")))
VERSIONS: dict[Dialect, tuple[str, str]] = {"vllm": ("/version", "0.11.0"),
                                            "ollama": ("/api/version", "0.12.6")}


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the request's last user message (images left out)."""
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if part.get("type") == "text")


@dataclass
class Behaviour:
    """What the server does with chat requests; every field is off by default."""

    fail_first: int = 0  # answer `first_status` to this many requests, then succeed
    first_status: int = 500
    status: int | None = None  # answer this status to every request
    retry_after_ms: int | None = None  # sent with error answers, to keep retries fast
    sleep_s: float = 0.0  # wait this long before answering (a client that hangs up ends it)
    close_first: int = 0  # drop this many connections without a word
    message: str | None = None  # the error message of `status`, instead of a scripted one
    unsupported: frozenset[str] = frozenset()  # fields this model refuses, as OpenAI's
    # reasoning models refuse sampling: a 400 naming the first one sent
    max_image_chars: int | None = None  # image data URLs longer than this are a 400


@dataclass
class ScriptedServer:
    """The running server: its URL, what it does, and what it was sent."""

    url: str = ""
    model: str = "scripted-vlm"
    dialect: Dialect = "vllm"
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[dict[str, Any]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)  # the paths of GET requests, in order
    headers: list[dict[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    in_flight: int = 0
    hung_up: list[int] = field(default_factory=list)  # requests (1 for the first) whose client
    # closed the connection while the server was still working on the answer
    most_in_flight: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: ScriptedServer, responder: Responder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: pytest shows failures, not every request."""

        def do_GET(self) -> None:
            with state.lock:
                state.gets.append(self.path)
            version = VERSIONS.get(state.dialect)
            if self.path.rstrip("/").endswith("/models"):
                self._json(200, {"object": "list", "data": [
                    {"id": state.model, "object": "model", "created": 0,
                     "owned_by": _owner(state)}]})
            elif version is not None and self.path == version[0]:
                self._json(200, {"version": version[1]})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(body)
                state.headers.append({k.lower(): v for k, v in self.headers.items()})
                state.times.append(time.monotonic())
                seen = len(state.requests)
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            try:
                self._answer(body, seen)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer(self, body: dict[str, Any], seen: int) -> None:
            behaviour = state.behaviour
            if seen <= behaviour.close_first:
                self.close_connection = True
                return
            if behaviour.sleep_s and self._wait(behaviour.sleep_s, seen):
                return
            refused = _refusal(state, body)
            if behaviour.status is not None or seen <= behaviour.fail_first:
                status = behaviour.status or behaviour.first_status
                message = behaviour.message or f"scripted failure {status}"
                self._json(status, {"object": "error", "message": message,
                                    "type": "InternalServerError", "param": None, "code": status})
            elif refused is not None:
                self._json(400, {"error": refused})
            elif body["model"] != state.model:
                self._json(404, {"object": "error", "type": "NotFoundError", "param": None,
                                 "message": f"The model `{body['model']}` does not exist.",
                                 "code": 404})
            elif body.get("stream"):
                self._stream(body, responder(body))
            else:
                text = responder(body)
                self._json(200, {
                    "id": "chatcmpl-scripted", "object": "chat.completion", "created": 0,
                    "model": state.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(text) // 4,
                              "total_tokens": PROMPT_TOKENS + len(text) // 4},
                })

        def _wait(self, seconds: float, seen: int) -> bool:
            """Work on the answer for `seconds`, as a slow model does; True when the wait ended
            early: the server is stopping, or the client closed the connection (recorded)."""
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0 and not state.stopping.is_set():
                readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    with state.lock:
                        state.hung_up.append(seen)
                    return True
            return state.stopping.is_set()

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400 and state.behaviour.retry_after_ms is not None:
                    self.send_header("retry-after-ms", str(state.behaviour.retry_after_ms))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up first (timeouts)
                self.close_connection = True

        def _stream(self, body: dict[str, Any], text: str) -> None:
            """Server-sent events as vLLM writes them: deltas, a finish, usage, [DONE]."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 0,
                    "model": state.model}
            pieces = [text[i:i + STREAM_PIECE] for i in range(0, len(text), STREAM_PIECE)]
            events: list[dict[str, Any]] = [
                {**base, "choices": [{"index": 0, "finish_reason": None,
                                      "delta": {"role": "assistant", "content": piece}}]}
                for piece in pieces
            ]
            events.append({**base, "choices": [{"index": 0, "delta": {},
                                                "finish_reason": "stop"}]})
            if body.get("stream_options", {}).get("include_usage"):
                events.append({**base, "choices": [], "usage": {
                    "prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(pieces),
                    "total_tokens": PROMPT_TOKENS + len(pieces)}})
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

    return Handler


def _owner(state: ScriptedServer) -> str:
    if state.dialect == "ollama":  # Ollama names a model's namespace, `library` for its own
        return state.model.split("/")[0] if "/" in state.model else "library"
    return {"vllm": "vllm", "openai": "system"}.get(state.dialect, "someone")


def _refusal(state: ScriptedServer, body: dict[str, Any]) -> dict[str, Any] | None:
    """The error object this server's kind answers a request with, or None to answer it."""
    behaviour = state.behaviour
    if state.dialect == "openai":
        unknown = sorted(set(body) - OPENAI_FIELDS)
        if unknown:
            return {"message": f"Unrecognized request argument supplied: {unknown[0]}",
                    "type": "invalid_request_error", "param": None, "code": None}
    refused = sorted(set(body) & behaviour.unsupported)
    if refused:
        return {"message": f"Unsupported value: '{refused[0]}' does not support "
                f"{body[refused[0]]} with this model. Only the default (1) value is supported.",
                "type": "invalid_request_error", "param": refused[0],
                "code": "unsupported_value"}
    urls = [part["image_url"]["url"] for message in body["messages"]
            if isinstance(message["content"], list) for part in message["content"]
            if part.get("type") == "image_url"]
    if state.dialect == "ollama" and not all(url.startswith(OLLAMA_IMAGES) for url in urls):
        return {"message": "invalid image input", "type": "invalid_request_error",
                "param": None, "code": None}
    limit = behaviour.max_image_chars
    if limit is not None and any(len(url) > limit for url in urls):
        return {"message": f"the image is over {limit} bytes", "type": "invalid_request_error",
                "param": None, "code": None}
    return None


@contextmanager
def scripted_server(responder: Responder, model: str = "scripted-vlm",
                    behaviour: Behaviour | None = None,
                    dialect: Dialect = "vllm") -> Iterator[ScriptedServer]:
    state = ScriptedServer(model=model, dialect=dialect, behaviour=behaviour or Behaviour())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, responder))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()
