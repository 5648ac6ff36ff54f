"""Keeping API keys out of every message, repr and log line the package writes.

Adapters register the keys of the clients they wrap (:func:`register_secrets_of`);
:func:`redact` masks every registered key, and the value of every environment
variable whose name says it holds a secret (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``),
in a text. Errors raised through a model client are redacted in place
(:func:`redact_exception`) before they surface, so a provider that echoes the key
in an error body (some proxies do) cannot put it in a traceback, a log or a report.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
"""Shorter values are not treated as secrets (masking them would mangle ordinary text)."""

_SECRET_ENV_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|SECRET_KEY|PASSWORD)$", re.I)
_LOCK = threading.Lock()
_SECRETS: set[str] = set()


def register_secret(value: Any) -> None:
    """Remember ``value`` (a str, or a pydantic ``SecretStr``) as a secret to mask."""
    if value is not None and hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LENGTH:
        with _LOCK:
            _SECRETS.add(value.strip())


def secrets_in(obj: Any) -> list[str]:
    """The API keys an ``openai`` client, a LangChain chat model or a ``dspy.LM`` holds.

    Looks at an ``api_key`` attribute, every pydantic ``SecretStr`` field, and an
    ``api_key`` in ``kwargs`` (DSPy), without calling anything on the object.
    """
    found: list[Any] = [getattr(obj, "api_key", None)]
    fields = getattr(obj, "__dict__", None)
    if isinstance(fields, dict):
        found += [v for v in fields.values() if hasattr(v, "get_secret_value")]
    kwargs = getattr(obj, "kwargs", None)
    if isinstance(kwargs, dict):
        found.append(kwargs.get("api_key"))
    out = []
    for value in found:
        if value is not None and hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LENGTH:
            out.append(value.strip())
    return out


def register_secrets_of(obj: Any) -> None:
    """Register every key :func:`secrets_in` finds on ``obj``."""
    for value in secrets_in(obj):
        register_secret(value)


def known_secrets() -> list[str]:
    """Registered secrets and secret-looking environment values, longest first."""
    with _LOCK:
        values = set(_SECRETS)
    for name, value in os.environ.items():
        value = value.strip()
        if (
            _SECRET_ENV_NAME.search(name)
            and len(value) >= MIN_SECRET_LENGTH
            and not value.isdigit()
            and not any(c.isspace() for c in value)
        ):
            values.add(value)
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every known secret replaced by ``[REDACTED]``.

    Example:
        >>> from afnio_langchain.models._secrets import redact, register_secret
        >>> register_secret("sk-example-0123456789")
        >>> redact("Incorrect API key provided: sk-example-0123456789.")
        'Incorrect API key provided: [REDACTED].'
    """
    if not isinstance(text, str) or not text:
        return text
    for secret in known_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` (a str, or dicts/lists/tuples of them) with known secrets masked."""
    if secrets is None:
        secrets = known_secrets()
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v, secrets) for v in value)
    return value


def redact_exception(exc: BaseException) -> BaseException:
    """Mask known secrets in ``exc`` (and the exceptions chained to it) in place.

    The exception keeps its type, so callers still catch ``openai.RateLimitError``
    and friends; its ``args`` and the ``message``/``body`` attributes the ``openai``
    client sets are rewritten. Returns ``exc``.
    """
    secrets = known_secrets()
    if not secrets:
        return exc
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            current.args = redact_value(current.args, secrets)
        except (TypeError, AttributeError):
            pass
        for name in ("message", "body", "msg"):
            value = current.__dict__.get(name) if hasattr(current, "__dict__") else None
            if isinstance(value, (str, dict, list)):
                try:
                    setattr(current, name, redact_value(value, secrets))
                except (AttributeError, TypeError):
                    pass
        current = current.__cause__ or current.__context__
    return exc


__all__ = [
    "REDACTED",
    "known_secrets",
    "redact",
    "redact_exception",
    "redact_value",
    "register_secret",
    "register_secrets_of",
    "secrets_in",
]
