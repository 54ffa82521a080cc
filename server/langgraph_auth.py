"""LangGraph's own routes (assistants, threads, runs, store) behind the same key as the OpenAI
routes: `langgraph.json` names this handler (`auth.path`), so `langgraph dev` and a LangGraph
server ask it about every request to those routes.

With `IMG2MUSIC_API_KEY` set, a request needs `Authorization: Bearer <key>`; `langgraph.json`
also sets `disable_studio_auth`, since `langgraph dev` would otherwise let any request that
claims to come from Studio (`x-auth-scheme: langsmith`) through without a check. Without a key,
every request is let through here, and the app's Host check (`security.HostCheck`, which the
LangGraph server applies to all routes) answers only loopback host names.
"""

from __future__ import annotations

from langgraph_sdk import Auth

from img2music.server.security import bearer_matches
from img2music.settings import get_settings

auth = Auth()


@auth.authenticate
async def authenticate(authorization: str | None) -> Auth.types.MinimalUserDict:
    """The operator, when the request carries the key (or none is set); else 401."""
    if not bearer_matches(authorization, get_settings()):
        raise Auth.exceptions.HTTPException(
            status_code=401,
            detail="missing or wrong API key: send Authorization: Bearer <IMG2MUSIC_API_KEY>")
    return {"identity": "img2music-operator", "is_authenticated": True}
