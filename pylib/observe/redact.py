"""Mask secrets in text (by pattern, and every registered value) before it is logged or sent."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"

# Names whose value is a secret, in query strings, key=value pairs and JSON.
_SECRET_NAMES = (
    r"pwd|passwd|password|pass|secret|token|access_token|api_key|apikey|auth|"
    r"authorization|dsn|credential|credentials|private_key|secret_access_key"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://user:***@host (the password may hold '@').
    (
        re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#\s@]*:)[^\s/?#]*(?=@)"),
        r"\g<pre>***",
    ),
    # ?pwd=...&password=... in query strings and form bodies.
    (
        re.compile(
            rf"(?P<pre>[?&;](?:{_SECRET_NAMES})=)(?!\*\*\*(?:[&#\s'\")]|$))[^&#\s'\"]*",
            re.IGNORECASE,
        ),
        r"\g<pre>***",
    ),
    # Authorization: Basic/Bearer/Digest header values.
    (re.compile(r"(?P<pre>\b(?:Basic|Bearer|Digest)\s+)[A-Za-z0-9+/=._\-]{8,}"), r"\g<pre>***"),
    # "password": "a b c" in JSON and reprs: the whole quoted value.
    (
        re.compile(
            rf"(?P<pre>\b(?:[A-Za-z0-9_]*_)?(?:{_SECRET_NAMES})(?P<q>['\"])\s*[:=]\s*(?P<v>['\"]))"
            r"(?!\*\*\*)(?:(?!(?P=v)).)*",
            re.IGNORECASE,
        ),
        r"\g<pre>***",
    ),
    # password=..., token: ..., "password": "..." in free text.
    (
        re.compile(
            rf"(?P<pre>\b(?:[A-Za-z0-9_]*_)?(?:{_SECRET_NAMES})['\"]?\s*[:=]\s*['\"]?)"
            r"(?!\*\*\*)[^\s'\",&}]+",
            re.IGNORECASE,
        ),
        r"\g<pre>***",
    ),
    # Camera address user:password@host:port (the wire format of device_params).
    (
        re.compile(r"(?P<pre>(?<![\w/])[\w.\-]+:)(?!\*\*\*@|/)\S+(?=@[\w.\-]+:\d+)"),
        r"\g<pre>***",
    ),
)

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()

# Values this short are too likely to be ordinary words or numbers to mask everywhere.
_MIN_SECRET_LENGTH = 4


def register_secret(value: str | None) -> None:
    """Mask this exact value in everything redacted from now on."""
    global _secrets
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        _secrets = _secrets | {value}


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def clear_secrets() -> None:
    """Forget registered secrets (tests; a process keeps them for its lifetime)."""
    global _secrets
    with _lock:
        _secrets = frozenset()


def redact(text: str) -> str:
    """Return ``text`` with every credential it contains replaced by ``***``."""
    if not text:
        return text
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_data(value: Any) -> Any:
    """Redact every string inside nested dicts, lists and tuples (for Sentry events)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact_data(item) for item in value)
    return value
