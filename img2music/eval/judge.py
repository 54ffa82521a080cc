"""The machine judge of the method's paper: a multimodal model sees the image and the tune as
ABC text and answers the human study's questions on a 1–7 scale.

Each question is a call of its own (no answer can colour the next), the judge never learns
which variant wrote a tune, and it always reads the shipped prompts, so it stays the same
while prompt sets are compared.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Literal

from langchain_core.language_models import BaseChatModel

from img2music.graph.models import acall_model, to_langchain
from img2music.graph.state import Message
from img2music.prompt_files import load_prompt_data, render_prompt, shipped_prompts
from img2music.settings import Settings
from img2music.tools.abc.extract import strip_reasoning

SCALE = (1, 7)
GROUPS = {"quality": "Music quality", "consistency": "Music–image consistency"}
JUDGE_FILES = ("judge_system.j2", "judge.j2", "judge_questions.toml", "caption_tune.j2")
MAX_KEPT_CHARS = 2_000
MAX_CAPTION_CHARS = 600
ParsedBy = Literal["json", "prose"]

_NUMBER = r"(\d+(?:\.\d+)?)"
_PROSE_PATTERNS = (
    re.compile(r"\bscore\b\W{0,4}" + _NUMBER, re.IGNORECASE),
    re.compile(r"\brating\b\W{0,4}" + _NUMBER, re.IGNORECASE),
    re.compile(_NUMBER + r"\s*(?:/|out of)\s*7\b", re.IGNORECASE),
    re.compile(r"\b(?:rate|give)\b[^.\n]{0,40}?\b" + _NUMBER + r"\b", re.IGNORECASE),
)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


@dataclass(frozen=True)
class Question:
    key: str
    group: str
    label: str
    question: str
    low: str
    high: str


@dataclass(frozen=True)
class Score:
    """A judge's answer read: the score (None when it gave none in range) and its reason."""

    value: float | None
    reason: str
    parsed_by: ParsedBy | None


def questions() -> list[Question]:
    """The eight questions, in the paper's order: quality first, then consistency."""
    data = load_prompt_data("judge_questions.toml", folder=shipped_prompts())
    result = []
    for key, entry in data.items():
        fields = dict(entry) if isinstance(entry, dict) else {}
        result.append(Question(key=key, group=str(fields["group"]), label=str(fields["label"]),
                               question=str(fields["question"]), low=str(fields["low"]),
                               high=str(fields["high"])))
    return sorted(result, key=lambda q: list(GROUPS).index(q.group))


def judge_prompt_hash() -> str:
    """Hash of the judge's own prompt files, recorded with every judgement."""
    digest = hashlib.sha256()
    for name in JUDGE_FILES:
        digest.update(name.encode() + b"\0" + (shipped_prompts() / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def judge_fingerprint(settings: Settings) -> str:
    """What a judgement depends on; judgements made otherwise are not reused on resume."""
    payload = json.dumps({"model": settings.judge_served_model,
                          "temperature": settings.judge_temperature,
                          "prompts": judge_prompt_hash()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def parse_score(text: str) -> Score:
    """The score from a JSON answer, else from prose ("Score: 5", "6/7", "I'd rate it 4").

    A number outside 1–7, or an answer with no readable number, gives no score: it is left
    out of the mean and counted, never guessed.
    """
    answer = strip_reasoning(text).strip()
    for match in reversed(_JSON_OBJECT.findall(answer)):
        try:
            data = json.loads(match)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "score" in data:
            reason = str(data.get("reason", ""))[:MAX_KEPT_CHARS]
            return Score(_in_scale(data["score"]), reason, "json")
    for pattern in _PROSE_PATTERNS:
        found = pattern.search(answer)
        if found:
            return Score(_in_scale(found.group(1)), answer[:MAX_KEPT_CHARS], "prose")
    numbers = set(re.findall(r"(?<![\d.])([1-7])(?![\d.])", answer))
    if len(numbers) == 1 and len(answer) <= 200:  # a bare "5", or one number in a short answer
        return Score(_in_scale(numbers.pop()), answer[:MAX_KEPT_CHARS], "prose")
    return Score(None, answer[:MAX_KEPT_CHARS], None)


def _in_scale(value: object) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    low, high = SCALE
    return number if math.isfinite(number) and low <= number <= high else None


def question_messages(image_url: str, abc: str, question: Question) -> list[Message]:
    """A fresh conversation: the system prompt, then the image, the tune and one question."""
    folder = shipped_prompts()
    text = render_prompt("judge.j2", folder=folder, abc=abc, question=question)
    return [
        {"role": "system", "content": render_prompt("judge_system.j2", folder=folder)},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                     {"type": "text", "text": text}]},
    ]


def caption_messages(abc: str) -> list[Message]:
    """The tune alone (no image): what picture does it evoke? For the CLIP proxy."""
    return [{"role": "user",
             "content": render_prompt("caption_tune.j2", folder=shipped_prompts(), abc=abc)}]


@dataclass(frozen=True)
class JudgeReply:
    score: Score
    text: str
    tokens: int


@dataclass(frozen=True)
class Judge:
    """The judge model at its endpoint, awaited like the composer (an evaluation asks many
questions at once); raises `VLMUnavailable` when it cannot answer."""

    model: BaseChatModel
    endpoint: str

    async def ask(self, image_url: str, abc: str, question: Question) -> JudgeReply:
        messages = to_langchain(question_messages(image_url, abc, question))
        reply = await acall_model(self.model, messages, endpoint=self.endpoint,
                                  max_chars=20_000, role="judge")
        return JudgeReply(parse_score(reply.text), reply.text[:MAX_KEPT_CHARS],
                          reply.input_tokens + reply.output_tokens)

    async def caption(self, abc: str) -> JudgeReply:
        reply = await acall_model(self.model, to_langchain(caption_messages(abc)),
                                 endpoint=self.endpoint, max_chars=20_000, role="judge")
        text = strip_reasoning(reply.text).strip()[:MAX_CAPTION_CHARS]
        return JudgeReply(Score(None, "", None), text, reply.input_tokens + reply.output_tokens)
