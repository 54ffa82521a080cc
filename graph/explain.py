"""The picture half of an explanation: where in the image the tune came from.

With a local copy of the model, the map is the paper's: the attention of the chosen tune's tokens
to the image tokens, averaged over layers, heads and tokens, overall and per section or voice.
With only a remote endpoint (vLLM returns no attention) and no local copy configured, it is a CLIP
patch-relevance map of the motivation, labelled as such.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.language_models import BaseChatModel

from img2music.graph.context import Context
from img2music.graph.models import to_langchain
from img2music.graph.state import State
from img2music.settings import Settings
from img2music.tools.images import image_from_data_url

logger = logging.getLogger(__name__)

NO_LOCAL_MODEL = ("attention needs a local copy of the model (IMG2MUSIC_ATTENTION_MODEL or the "
                  "local backend); this is CLIP patch relevance instead")


def image_explanation(state: State, chosen: int, context: Context, model: BaseChatModel,
                      settings: Settings) -> dict[str, Any]:
    """Grid(s) for the overlay, the method that made them, and any note on a fallback; the
    operator's `settings` name the CLIP model and any local copy of the VLM for attention."""
    if context.explain == "none":
        return {}
    note = ""
    if context.explain == "attention":
        vlm = _attention_vlm(model, settings.attention_model)
        if vlm is not None:
            return _attention(state, chosen, vlm)
        note = NO_LOCAL_MODEL
    from img2music.tools.explain.relevance import clip_patch_relevance
    from img2music.tools.retrieval.embedder import load_embedder

    text = state.get("motivation") or state["attempts"][chosen]["motivation"] or \
        state.get("description", "")
    grid = clip_patch_relevance(load_embedder(settings), image_from_data_url(state["image"]), text)
    return {"method": "clip", "grid": grid.tolist(), **({"note": note} if note else {})}


def _attention_vlm(model: BaseChatModel, attention_model: str | None) -> Any:
    """A local model that can return attention weights, or None."""
    from img2music.graph.local_vlm import LocalChatModel, shared_local_vlm

    if attention_model:
        return shared_local_vlm(attention_model, trust_remote_code=True)
    if isinstance(model, LocalChatModel):
        return model.vlm  # the composer's own copy: it switches to eager attention for the pass
    return None


def _attention(state: State, chosen: int, vlm: Any) -> dict[str, Any]:
    from img2music.graph.local_vlm import LocalTurn, to_conversation

    conversation = state["conversation"]
    answers = [i for i, message in enumerate(conversation) if message["role"] == "assistant"]
    prompt = conversation[: answers[chosen]]
    answer = conversation[answers[chosen]]
    text = answer["content"] if isinstance(answer["content"], str) else ""
    turn = LocalTurn(conversation=to_conversation(to_langchain(prompt)), text=text,
                     generated_ids=(), prompt_tokens=0, output_tokens=0, finish_reason="stop")
    attention = vlm.image_attention(turn)
    return {
        "method": "attention", "grid": attention.grid.tolist(),
        "sections": {name: grid.tolist() for name, grid in attention.sections.items()},
        "layers": attention.layers, "heads": attention.heads, "tokens": attention.tokens,
    }
