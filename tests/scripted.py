"""A chat model that answers from a script and remembers what it was asked (test support)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field


class ScriptedChatModel(BaseChatModel):
    """Replies in order; each reply reports token usage like a real server would."""

    replies: list[str]
    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: Sequence[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if len(self.calls) >= len(self.replies):
            raise AssertionError(f"the script has only {len(self.replies)} replies")
        self.calls.append(list(messages))
        text = self.replies[len(self.calls) - 1]
        prompt_tokens = sum(len(str(m.content)) // 4 for m in messages)
        message = AIMessage(content=text, usage_metadata={
            "input_tokens": prompt_tokens, "output_tokens": len(text) // 4,
            "total_tokens": prompt_tokens + len(text) // 4,
        })
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: Sequence[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """The reply at once, on the event loop, as an async client's arrives: LangChain's
        default would send each call to a worker thread, a cost no real endpoint's call has
        (and that `benchmarks.graph` would count as the graph's)."""
        return self._generate(messages, stop, **kwargs)

    def texts(self, call: int) -> list[str]:
        """The text of each message of one call, images left out."""
        return [
            m.content if isinstance(m.content, str)
            else " ".join(p.get("text", "") for p in m.content if isinstance(p, dict))
            for m in self.calls[call]
        ]
