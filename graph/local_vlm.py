"""The VLM in-process with transformers: no server needed, and attention maps become possible.

vLLM cannot return attention weights, so the paper's attention map needs a transformers copy of
the model anyway; with this backend the same copy also writes the tunes. `LocalChatModel` is a
LangChain chat model, so graph nodes call it exactly like the OpenAI-compatible one, with the same
OpenAI-style messages (text parts and `image_url` parts holding data URLs). A chat model keeps
nothing of a call: several runs share one, and the attention pass reads the conversation from
its own run's state.

One copy of the weights per process, model and placement (`shared_local_vlm`): the composing
model and the attention pass share it. It is loaded with the fast default attention; the
attention pass switches it to eager attention (the only one that returns weights) for its own
forward pass, under the model's lock, and back.

Models are never downloaded here: `LocalVLM.load` reads local files only (a folder or the
Hugging Face cache) and says so when they are missing.

A call can be constrained by a grammar (xgrammar's EBNF, e.g. the ABC answer grammar): before each
token is sampled, every token the grammar does not allow next is masked out, so the answer
matches the grammar by construction (the ABC grammar itself leaves a think-mode <think> block
free).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import xgrammar
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessor

from img2music.tools.abc.scan import sections_of
from img2music.tools.devices import resolve_device
from img2music.tools.explain.attention import (
    AttentionUnavailable,
    ImageAttention,
    image_attention,
    token_spans_for,
)
from img2music.tools.images import image_from_data_url

logger = logging.getLogger(__name__)

ROLES = {"system": "system", "human": "user", "ai": "assistant"}
MAX_COMPILED_GRAMMARS = 8
CALL_KEYS = frozenset({"temperature", "top_p", "top_k", "max_new_tokens", "grammar", "seed"})
# Placeholders the processor inserts for pictures; a model that wrote one would break the
# attention pass (image features no longer match image tokens), so generation never does.
VISION_TOKEN_FIELDS = (
    "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"
)


class LocalModelUnavailable(RuntimeError):
    """The local model or its processor cannot be loaded from local files."""


@dataclass(frozen=True)
class LocalTurn:
    """One model call: the conversation as the processor read it, and what the model wrote."""

    conversation: list[dict[str, Any]]
    text: str
    generated_ids: tuple[int, ...]  # the written tokens, without the end-of-turn token
    prompt_tokens: int  # image placeholder tokens included
    output_tokens: int  # the end-of-turn token included, as servers count it
    finish_reason: str  # "stop" or "length"
    constrained: bool = False  # a grammar masked the tokens of the answer
    mask_seconds: tuple[float, ...] = ()  # time spent masking, per constrained token

    @property
    def image(self) -> Image.Image | None:
        """The conversation's first image: the one an attention map is drawn over."""
        for message in self.conversation:
            content = message["content"]
            for part in content if isinstance(content, list) else ():
                if part.get("type") == "image":
                    image: Image.Image = part["image"]
                    return image
        return None


class LocalVLM:
    """A transformers image-text-to-text model with its processor, one call at a time."""

    def __init__(self, model: Any, processor: Any, *, name: str = "local") -> None:
        self.model = model
        self.processor = processor
        self.name = name
        # One generate or forward at a time: graph runs may share the model across threads.
        self._lock = threading.Lock()
        self._grammars: OrderedDict[str, xgrammar.CompiledGrammar] = OrderedDict()
        self._grammar_compiler: xgrammar.GrammarCompiler | None = None

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        trust_remote_code: bool = False,
        attention: bool = False,
        device: str = "auto",
    ) -> LocalVLM:
        """Load from a folder or the Hugging Face cache; never downloads.

        `attention=True` selects eager attention, the only implementation that returns attention
        weights, at the cost of slower, more memory-hungry generation. Keye-VL needs
        `trust_remote_code=True` (its modelling code ships with the weights).
        """
        target = torch.device(resolve_device(device))
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        try:
            model: Any = AutoModelForImageTextToText.from_pretrained(
                name_or_path,
                dtype=dtype,
                attn_implementation="eager" if attention else None,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
            processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                name_or_path, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except (OSError, ValueError, ImportError) as error:
            reason = str(error).strip().rstrip(".")
            raise LocalModelUnavailable(
                f"Could not load the local VLM {name_or_path!r} from local files ({reason}). "
                "It must be downloaded first, on a machine with network (`hf download "
                f"{name_or_path}`, or a copy of its folder with IMG2MUSIC_VLM_MODEL set to the "
                "folder): img2music does not download models at run time."
            ) from error
        logger.info("loaded %s on %s (%s, %s attention)", name_or_path, target, dtype,
                    "eager" if attention else "default")
        return cls(model.to(target).eval(), processor, name=name_or_path)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        found = getattr(self.processor, "image_token_id", None)
        found = found if isinstance(found, int) else self.model.config.image_token_id
        return int(found)

    def prompt_inputs(self, conversation: list[dict[str, Any]]) -> Any:
        """The processor's tensors for the conversation, ending with the assistant's turn."""
        inputs = self.processor.apply_chat_template(
            conversation, tokenize=True, add_generation_prompt=True, return_dict=True,
            return_tensors="pt",
        )
        return inputs.to(self.model.device)

    def generate(
        self,
        conversation: list[dict[str, Any]],
        *,
        temperature: float,
        top_p: float,
        top_k: int,
        max_new_tokens: int,
        stop: Sequence[str] | None = None,
        grammar: str | None = None,
        seed: int | None = None,
    ) -> LocalTurn:
        """Sample an answer; temperature 0 is greedy, top_k 0 or -1 switches top-k off.

        With `grammar`, the answer matches it (the grammar's `root`), or starts to when it is cut
        at `max_new_tokens`. With `seed`, torch's generators are seeded for this call alone (the
        process's random state is put back after), so the same call samples the same answer.
        """
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=temperature, top_p=top_p, top_k=max(top_k, 0))
        suppressed = [
            value for field in VISION_TOKEN_FIELDS
            if isinstance(value := getattr(self.model.config, field, None), int)
        ]
        if suppressed:
            options["suppress_tokens"] = suppressed
        if stop:
            options.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        device = self.model.device
        with self._lock, torch.inference_mode(), torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            inputs = self.prompt_inputs(conversation)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            masker = None
            if grammar is not None:
                masker = GrammarLogitsProcessor(self.compiled_grammar(grammar),
                                                prompt_length=prompt_tokens)
                options["logits_processor"] = [masker]
            output = self.model.generate(**inputs, **options)
        written = [int(token) for token in output[0, prompt_tokens:]]
        ends = _end_tokens(self.model.generation_config)
        finished = bool(written) and written[-1] in ends
        content = written[:-1] if finished else written
        text = self.tokenizer.decode(content, skip_special_tokens=True)
        # Like OpenAI-compatible servers: the text ends before the first stop string it holds.
        cut = min((text.index(word) for word in stop or () if word in text), default=None)
        if cut is not None:
            text, finished = text[:cut], True
        return LocalTurn(
            conversation=conversation,
            text=text,
            generated_ids=tuple(content),
            prompt_tokens=prompt_tokens,
            output_tokens=len(written),
            finish_reason="stop" if finished else "length",
            constrained=masker is not None,
            mask_seconds=tuple(masker.mask_seconds) if masker else (),
        )

    def compiled_grammar(self, grammar: str) -> xgrammar.CompiledGrammar:
        """The grammar compiled against this model's vocabulary, once per grammar text; the
        `MAX_COMPILED_GRAMMARS` used last are kept (a run's musical controls make a grammar of
        its own).

        Callers hold the model lock (`generate` does), so compiling happens once.
        """
        compiled = self._grammars.pop(grammar, None)
        if compiled is None:
            if self._grammar_compiler is None:
                logits_width = int(self.model.get_output_embeddings().weight.shape[0])
                info = xgrammar.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=logits_width,
                    stop_token_ids=sorted(_end_tokens(self.model.generation_config)),
                )
                self._grammar_compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
            compiled = self._grammar_compiler.compile_grammar(grammar)
        self._grammars[grammar] = compiled
        while len(self._grammars) > MAX_COMPILED_GRAMMARS:
            self._grammars.popitem(last=False)
        return compiled

    def image_attention(self, turn: LocalTurn) -> ImageAttention:
        """The attention map of a turn's text to its image, overall and per tune section.

        The text is re-tokenized with offsets so that sections map to tokens exactly; that is the
        sampled token sequence whenever the model wrote the canonical tokenization (almost always).
        """
        encoded = self.tokenizer(turn.text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = encoded["input_ids"]
        if ids != list(turn.generated_ids):
            logger.info("the written text re-tokenizes differently from the sampled tokens; "
                        "the attention pass reads the re-tokenized text")
        spans = token_spans_for(turn.text, encoded["offset_mapping"], sections_of(turn.text))
        with self._lock, _eager_attention(self.model):
            inputs = self.prompt_inputs(turn.conversation)
            return image_attention(
                self.model, inputs, ids, self.image_token_id, token_spans=spans
            )


class LocalChatModel(BaseChatModel):
    """A LangChain chat model over a `LocalVLM`, for OpenAI-style text and image messages."""

    vlm: LocalVLM
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_new_tokens: int = 4096

    @property
    def _llm_type(self) -> str:
        return "img2music-local-vlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.vlm.name, "temperature": self.temperature, "top_p": self.top_p,
            "top_k": self.top_k, "max_new_tokens": self.max_new_tokens,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        unknown = set(kwargs) - CALL_KEYS
        if unknown:
            raise TypeError(f"LocalChatModel does not take {', '.join(sorted(unknown))}")
        turn = self.vlm.generate(
            to_conversation(messages),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            top_k=kwargs.get("top_k", self.top_k),
            max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
            stop=stop,
            grammar=kwargs.get("grammar"),
            seed=kwargs.get("seed"),
        )
        message = AIMessage(
            content=turn.text,
            usage_metadata=UsageMetadata(
                input_tokens=turn.prompt_tokens,
                output_tokens=turn.output_tokens,
                total_tokens=turn.prompt_tokens + turn.output_tokens,
            ),
            response_metadata={"model_name": self.vlm.name, "finish_reason": turn.finish_reason,
                               "constrained": turn.constrained,
                               "mask_seconds": list(turn.mask_seconds)},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks the scores of every token the grammar does not allow next (one sequence);
    `mask_seconds` records each masking's time."""

    def __init__(self, compiled: xgrammar.CompiledGrammar, *, prompt_length: int) -> None:
        self._matcher = xgrammar.GrammarMatcher(compiled)
        self._bitmask = xgrammar.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
        self._prompt_length = prompt_length
        self._seen = 0  # written tokens already given to the matcher
        self.mask_seconds: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        written = [int(token) for token in input_ids[0, self._prompt_length:]]
        for token in written[self._seen:]:
            if not self._matcher.accept_token(token):
                raise RuntimeError(f"token {token} was sampled against the grammar's mask")
        self._seen = len(written)
        started = time.perf_counter()
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgrammar.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device))
        self.mask_seconds.append(time.perf_counter() - started)
        return scores


def shared_local_vlm(
    name_or_path: str, *, trust_remote_code: bool = False, device: str = "auto"
) -> LocalVLM:
    """The process's one loaded copy of a model on a device: loading an 8B model takes a minute
    and 16 GB, so the composer and the attention pass (and every run) share it."""
    target = torch.device(resolve_device(device))
    return load_once(_model_key(name_or_path), str(target), trust_remote_code)


@lru_cache(maxsize=2)
def load_once(name_or_path: str, device: str, trust_remote_code: bool) -> LocalVLM:
    """The cache behind `shared_local_vlm`: keyed by the model's folder (or hub name), the
    device and so the dtype (`LocalVLM.load` picks it from the device)."""
    return LocalVLM.load(name_or_path, trust_remote_code=trust_remote_code, device=device)


def _model_key(name_or_path: str) -> str:
    """A folder by its resolved path (two spellings of one folder are one model); a hub name
    as it is."""
    folder = Path(name_or_path).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name_or_path


@contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """The model with eager attention for the duration of the block (the caller holds the
    model's lock), then as it was: the one implementation that returns attention weights,
    too slow and memory-hungry to generate with."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    if not model._can_set_attn_implementation():
        raise AttentionUnavailable(
            f"{type(model).__name__} cannot switch to eager attention at run time; load it "
            "with eager attention (LocalVLM.load(..., attention=True)) to draw attention maps")
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def to_conversation(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as a processor's chat-template conversation, images decoded to PIL."""
    conversation: list[dict[str, Any]] = []
    for message in messages:
        role = ROLES.get(message.type)
        if role is None:
            raise ValueError(
                f"the local VLM takes system, human and AI messages, not {message.type}"
            )
        content = message.content
        parts: str | list[dict[str, Any]] = (
            content if isinstance(content, str) else [_part(part) for part in content]
        )
        conversation.append({"role": role, "content": parts})
    return conversation


def _part(part: str | dict[Any, Any]) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if part.get("type") == "text":
        return {"type": "text", "text": part["text"]}
    if part.get("type") == "image_url":
        url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
        return {"type": "image", "image": image_from_data_url(url)}
    raise ValueError(f"the local VLM takes text and image_url parts, not {part.get('type')!r}")


def _end_tokens(generation_config: Any) -> set[int]:
    ends = generation_config.eos_token_id
    return set() if ends is None else {ends} if isinstance(ends, int) else set(ends)
