"""Keeping API keys out of every message, repr and log line the package writes.

Adapters register the keys of the clients they wrap (:func:`register_secrets_of`):
the API key, secret-named headers (``Authorization``, ``api-key``, ``x-api-key``...)
in default and per-call headers, and the password of a base URL's userinfo.
:func:`redact` masks every registered key, and the value of every environment
variable whose name says it holds a secret (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``),
in a text; :func:`redact_value` also masks every value stored under a secret-named
key. Errors raised through a model client are redacted in place
(:func:`redact_exception`) before they surface, so a provider that echoes the key
in an error body (some proxies do) cannot put it in a traceback, a log or a report.

Masking always comes before cutting: :func:`excerpt` is the one way to shorten a
text that may hold a key (cut first, and 20 of a key's 23 characters could show).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
"""Shorter values are not treated as secrets (masking them would mangle ordinary text)."""

_SECRET_ENV_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|SECRET_KEY|PASSWORD)$", re.I)
_SECRET_FIELD = re.compile(
    r"(^|[-_])(authorization|api[-_]?key|apikey|secret([-_]?key)?|password|passwd|cookie"
    r"|((access|auth|bearer|session|refresh|id|api)[-_]?)token)$|^token$",
    re.I,
)
_AUTH_SCHEME = re.compile(r"^(bearer|basic|token)\s+", re.I)
_LOCK = threading.Lock()
_SECRETS: set[str] = set()


def is_secret_field(name: Any) -> bool:
    """Whether a dict key or header name says its value is a secret (``api_key``,
    ``Authorization``, ``x-api-key``, ``access_token``...; not ``max_tokens``).

    Example:
        >>> from afnio_langchain.models._secrets import is_secret_field
        >>> [is_secret_field(n) for n in ("x-api-key", "Authorization", "max_tokens")]
        [True, True, False]
    """
    return isinstance(name, str) and _is_secret_name(name)


@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    # Asked for every key of every call's invocation params (LangChain callbacks):
    # the same few dozen names, so the regex runs once per name.
    return bool(_SECRET_FIELD.search(name))


def register_secret(value: Any) -> None:
    """Remember ``value`` (a str, or a pydantic ``SecretStr``) as a secret to mask."""
    if value is not None and hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LENGTH:
        with _LOCK:
            _SECRETS.add(value.strip())


def header_secrets(headers: Any) -> list[str]:
    """The values of the secret-named headers in ``headers`` (a mapping), and the
    credential after an ``Authorization`` scheme (``Bearer sk-...`` gives both)."""
    if not isinstance(headers, Mapping):
        return []
    out = []
    for name, value in headers.items():
        if is_secret_field(name) and isinstance(value, str):
            out.append(value)
            out.append(_AUTH_SCHEME.sub("", value))
    return out


def url_secrets(url: Any) -> list[str]:
    """The credentials in a URL: its userinfo's password (or a lone user, which is
    often a token) and the values of secret-named query parameters."""
    if url is None:
        return []
    try:
        parts = urllib.parse.urlsplit(str(url))
    except ValueError:
        return []
    out = [parts.password or parts.username or ""]
    out += [v for k, v in urllib.parse.parse_qsl(parts.query) if is_secret_field(k)]
    return [urllib.parse.unquote(v) for v in out if v]


def mask_url(url: str) -> str:
    """``url`` with its userinfo and secret-named query values masked.

    Example:
        >>> from afnio_langchain.models._secrets import mask_url
        >>> mask_url("https://me:sk-0123456789@proxy.example/v1?api_key=abc&x=1")
        'https://[REDACTED]@proxy.example/v1?api_key=[REDACTED]&x=1'
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{k}={REDACTED}" if is_secret_field(k) else f"{k}={v}" if v else k
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_HEADER_FIELDS = ("default_headers", "_custom_headers", "headers", "extra_headers")
_URL_FIELD = re.compile(r"(^|_)(base_url|api_base|endpoint)$", re.I)


@functools.lru_cache(maxsize=1024)
def _is_url_field(name: str) -> bool:
    """Whether a field's name says it holds a base URL: ``base_url``, ``openai_api_base``,
    and the private names clients give theirs (``_base_url``, openai's
    ``_configured_base_url`` since 3.x)."""
    return bool(_URL_FIELD.search(name))


def secrets_in(obj: Any) -> list[str]:
    """The API keys an ``openai`` client, a LangChain chat model or a ``dspy.LM`` holds.

    Looks at an ``api_key`` attribute, every pydantic ``SecretStr`` field, an
    ``api_key`` in ``kwargs`` (DSPy), secret-named default headers, and the
    credentials of the base URL, without calling anything on the object.
    """
    found: list[Any] = [getattr(obj, "api_key", None)]
    fields = getattr(obj, "__dict__", None)
    if isinstance(fields, dict):
        found += [v for v in fields.values() if hasattr(v, "get_secret_value")]
        for name in _HEADER_FIELDS:
            found += header_secrets(fields.get(name))
        for name, value in fields.items():
            if value is not None and isinstance(name, str) and _is_url_field(name):
                found += url_secrets(value)
    kwargs = getattr(obj, "kwargs", None)
    if isinstance(kwargs, dict):
        found.append(kwargs.get("api_key"))
        found += header_secrets(kwargs.get("headers")) + header_secrets(kwargs.get("extra_headers"))
        found += url_secrets(kwargs.get("api_base")) + url_secrets(kwargs.get("base_url"))
    out = []
    for value in found:
        if value is not None and hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LENGTH:
            out.append(value.strip())
    return out


_WATCHED_DICTS = (*_HEADER_FIELDS, "kwargs")
_REGISTERED: dict[int, tuple[weakref.ref[Any], tuple[Any, ...], tuple[Any, ...]]] = {}
"""id(obj) -> (reference to obj, :func:`_fields_state` of obj when its keys were last
registered, the values of that state kept alive); dropped when obj is collected."""


def register_secrets_of(obj: Any) -> None:
    """Register every key :func:`secrets_in` finds on ``obj``.

    An object seen before is looked at again only when one of its fields changed since
    (:func:`_fields_state`): LangChain chat models get a fresh adapter per call, and
    reading their fields for keys costs about 25 µs a time (``benchmarks/``).

    Example:
        >>> from afnio_langchain.models._secrets import known_secrets, register_secrets_of
        >>> class Client:
        ...     def __init__(self, key): self.api_key = key
        >>> client = Client("sk-first-0123456789")
        >>> register_secrets_of(client)
        >>> client.api_key = "sk-second-0123456789"  # rotated: seen on the next call
        >>> register_secrets_of(client)
        >>> {"sk-first-0123456789", "sk-second-0123456789"} <= set(known_secrets())
        True
    """
    fields = getattr(obj, "__dict__", None)
    state = _fields_state(fields) if type(fields) is dict else None
    key = id(obj)
    if state is not None:
        seen = _REGISTERED.get(key)
        if seen is not None and seen[0]() is obj and seen[1] == state:
            return
    for value in secrets_in(obj):
        register_secret(value)
    if state is None:
        return
    try:
        ref = weakref.ref(obj, lambda _r, key=key: _REGISTERED.pop(key, None))
    except TypeError:  # not weak-referenceable: looked at every time
        return
    _REGISTERED[key] = (ref, state, _kept(fields))


def _fields_state(fields: dict[str, Any]) -> tuple[Any, ...]:
    """Whether what :func:`secrets_in` reads from an object's ``__dict__`` changed: the
    fields' names and the identity of their values, and the items of the header and
    keyword dicts (changed in place). Identities are exact because the values that can
    hold a key are kept alive with the state (:func:`_kept`): no new value can take
    the id of one that was replaced."""
    return (
        tuple(fields),
        tuple(map(id, fields.values())),
        tuple(_items(fields.get(name)) for name in _WATCHED_DICTS),
    )


def _items(value: Any) -> Any:
    return tuple(value.items()) if type(value) is dict else value


def _kept(fields: dict[str, Any]) -> tuple[Any, ...]:
    """The values of ``fields`` that can hold a key (texts, secrets, URLs, the watched
    dicts); other objects (clients, callbacks) are not kept alive by the registry."""
    return tuple(
        value
        for name, value in fields.items()
        if _holds_value(type(value))
        or (type(value) is dict and name in _WATCHED_DICTS)
        or (isinstance(name, str) and _is_url_field(name))
    )


@functools.lru_cache(maxsize=256)
def _holds_value(kind: type) -> bool:
    """Whether a field of type ``kind`` can itself be a key: a text or a secret such as
    pydantic's ``SecretStr``."""
    return issubclass(kind, (str, bytes)) or hasattr(kind, "get_secret_value")


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


def excerpt(text: Any, limit: int = 300) -> str:
    """``text`` masked, then cut to about ``limit`` characters: the one way to quote
    something that may hold a key in an error.

    Only a window a little longer than ``limit`` is masked (enough to hold any key
    that starts inside the cut), so quoting a 20 MB body stays cheap.

    Example:
        >>> from afnio_langchain.models._secrets import excerpt, register_secret
        >>> register_secret("sk-excerpt-0123456789abcdef")
        >>> excerpt("x" * 16 + "sk-excerpt-0123456789abcdef", limit=20)
        'xxxxxxxxxxxxxxxx[RED...'
    """
    if not isinstance(text, str):
        text = str(text)
    secrets = known_secrets()
    window = limit + (len(secrets[0]) if secrets else 0)
    masked = redact(text[:window], secrets)
    return masked if len(masked) <= limit and len(text) <= window else masked[:limit] + "..."


def redact_value(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` (a str, or dicts/lists/tuples of them) with known secrets masked, and
    every str stored under a secret-named key (:func:`is_secret_field`) replaced."""
    if secrets is None:
        secrets = known_secrets()
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {
            k: REDACTED
            if isinstance(v, str) and v and is_secret_field(k)
            else redact_value(v, secrets)
            for k, v in value.items()
        }
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


def register_header_secrets(headers: Any) -> None:
    """Register the secret-named header values of ``headers`` (per-call headers)."""
    for value in header_secrets(headers):
        register_secret(value)


__all__ = [
    "REDACTED",
    "excerpt",
    "header_secrets",
    "is_secret_field",
    "known_secrets",
    "mask_url",
    "redact",
    "redact_exception",
    "redact_value",
    "register_header_secrets",
    "register_secret",
    "register_secrets_of",
    "secrets_in",
    "url_secrets",
]
