"""Keeping secrets and local paths out of what img2music writes and answers.

Reports, answers and error lines travel: they are served to clients, shared, pasted into issues.
None of them may carry an API key, the credentials in an endpoint URL, or where this machine keeps
its files; `scrub` takes those out of any JSON-like value, `redact_url` out of one URL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from img2music.settings import Settings

T = TypeVar("T")
REDACTED = "[redacted]"
DATA_DIR = "<data dir>"
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)[^/\s@]+@")


def redact_url(url: str) -> str:
    """The URL without user name, password, query or fragment (where keys hide)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return URL_CREDENTIALS.sub(r"\g<scheme>", url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def secret_values(settings: Settings) -> list[str]:
    """The keys img2music holds, longest first (a key may contain a shorter one)."""
    keys = [settings.api_key, settings.vlm_api_key, settings.judge_api_key]
    values = {key.get_secret_value() for key in keys if key is not None}
    return sorted((value for value in values if value not in ("", "EMPTY")), key=len,
                  reverse=True)


def scrub(value: T, settings: Settings) -> T:
    """`value` (strings, lists, dicts, as JSON holds them) without keys, URL credentials, the data
    folder's location or the home folder's."""
    replacements = [(secret, REDACTED) for secret in secret_values(settings)]
    for folder in {str(settings.data_dir), str(settings.data_dir.resolve())}:
        if len(folder) > 1:
            replacements.append((folder, DATA_DIR))
    home = str(Path.home())
    if len(home) > 1:
        replacements.append((home, "~"))
    return cast(T, _scrub(value, replacements))


def _scrub(value: Any, replacements: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for secret, mark in replacements:
            value = value.replace(secret, mark)
        return URL_CREDENTIALS.sub(r"\g<scheme>", value)
    if isinstance(value, dict):
        return {key: _scrub(item, replacements) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(item, replacements) for item in value)
    return value
