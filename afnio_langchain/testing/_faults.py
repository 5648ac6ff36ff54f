"""The failures the loopback server can inject: what real providers do wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

FAULT_KINDS = (
    "status",
    "refuse_json_schema",
    "timeout",
    "reset",
    "truncated",
    "malformed",
    "empty_choices",
    "empty_content",
    "long",
)

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_LLAMA_CPP_REFUSAL = (
    'response_format type must be one of "text" or "json_object", but got: json_schema'
)


@dataclass(frozen=True)
class Fault:
    """One injected failure, consumed by one request.

    Every fault first waits ``delay`` seconds, then acts according to ``kind``:

    - ``status``: answers HTTP ``status`` with an OpenAI-style JSON error body (or
      ``body`` verbatim), with ``retry-after`` / ``retry-after-ms`` headers when set.
    - ``refuse_json_schema``: HTTP 500, as llama.cpp's server does, if the request
      asks for ``response_format.type == "json_schema"``; otherwise a normal answer.
    - ``timeout``: a normal answer after ``delay`` seconds (set it past the client's
      timeout).
    - ``reset``: closes the connection (with a TCP reset) without any response.
    - ``truncated``: sends headers whose ``Content-Length`` exceeds the body, then closes.
    - ``malformed``: HTTP 200 whose body is not JSON (``body``, or a default).
    - ``empty_choices``: HTTP 200, a valid completion with ``choices: []``.
    - ``empty_content``: HTTP 200, a completion whose content is ``""``.
    - ``long``: HTTP 200, a reply of about ``size`` characters.

    Prefer the constructors (``Fault.http(503)``, ``Fault.rate_limit(0.3)``, ...).

    Example:
        >>> from afnio_langchain.testing import Fault
        >>> Fault.rate_limit(retry_after=0.3).status
        429
        >>> Fault.timeout(1.5).delay
        1.5
    """

    kind: str
    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    delay: float = 0.0
    body: str | None = None
    size: int = 200_000
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.kind == "status" and (self.status is None or not 100 <= self.status <= 599):
            raise ValueError(f"a status fault needs an HTTP status, got {self.status!r}")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")

    @classmethod
    def http(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        body: str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """An HTTP error ``status`` with an OpenAI-style JSON error body."""
        return cls(
            "status",
            status=status,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            body=body,
            delay=delay,
        )

    @classmethod
    def rate_limit(
        cls, retry_after: float | None = None, *, retry_after_ms: float | None = None
    ) -> Fault:
        """HTTP 429, with a ``retry-after`` (seconds) or ``retry-after-ms`` header if given."""
        return cls.http(429, retry_after=retry_after, retry_after_ms=retry_after_ms)

    @classmethod
    def refuse_json_schema(cls) -> Fault:
        """HTTP 500 if the request asks for a ``json_schema`` response format."""
        return cls("refuse_json_schema")

    @classmethod
    def timeout(cls, delay: float) -> Fault:
        """Answer normally, but only after ``delay`` seconds."""
        return cls("timeout", delay=delay)

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection without a response."""
        return cls("reset")

    @classmethod
    def truncated(cls) -> Fault:
        """Send headers announcing more body than is sent, then close."""
        return cls("truncated")

    @classmethod
    def malformed(cls, body: str | None = None, *, content_type: str = "application/json") -> Fault:
        """HTTP 200 with a body that is not JSON."""
        return cls("malformed", body=body, content_type=content_type)

    @classmethod
    def empty_choices(cls) -> Fault:
        """HTTP 200 with ``choices: []``."""
        return cls("empty_choices")

    @classmethod
    def empty_content(cls) -> Fault:
        """HTTP 200 with an empty message content."""
        return cls("empty_content")

    @classmethod
    def long(cls, size: int = 200_000) -> Fault:
        """HTTP 200 with a reply of about ``size`` characters."""
        return cls("long", size=size)


FaultLike = Union[Fault, int, str]


def _as_fault(fault: FaultLike) -> Fault:
    if isinstance(fault, Fault):
        return fault
    if isinstance(fault, bool):
        raise TypeError(f"expected a Fault, an HTTP status or a fault kind, got {fault!r}")
    if isinstance(fault, int):
        return Fault.http(fault)
    if isinstance(fault, str):
        return Fault(fault)
    raise TypeError(f"expected a Fault, an HTTP status or a fault kind, got {fault!r}")


__all__ = ["FAULT_KINDS", "Fault", "FaultLike"]
