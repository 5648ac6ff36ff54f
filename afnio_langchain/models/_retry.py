"""The one retry policy for model calls: transient failures are retried with backoff.

Transient: HTTP 408/409/429 and 5xx, timeouts, dropped connections. A ``retry-after``
(or ``retry-after-ms``) header is honoured, capped at ``max_wait``. Anything else
(bad request, authentication, a model error) surfaces at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status carried by a client exception, if any (openai, httpx, litellm)."""
    for candidate in (exc, getattr(exc, "response", None)):
        code = getattr(candidate, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: rate limits, server errors, timeouts, resets."""
    if getattr(exc, "transient", False) or isinstance(
        exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)
    ):
        return True
    code = status_code_of(exc)
    if code is not None:
        return code in TRANSIENT_STATUS or code >= 500
    names = {cls.__name__ for cls in type(exc).__mro__}
    return any(marker in name for name in names for marker in _TRANSIENT_NAME_MARKERS)


# Class-name markers for errors that carry no ``status_code``. Besides httpx/openai
# names, these cover DSPy's retryable errors exactly (``dspy.utils.exceptions.
# is_retryable_lm_error``: LMRateLimitError, LMServerError, LMTimeoutError,
# LMLockTimeoutError, LMTransportError) and lm15's RateLimitError/ServerError.
_TRANSIENT_NAME_MARKERS = (
    "Timeout",
    "ConnectionError",
    "ConnectError",
    "RemoteProtocolError",
    "RateLimit",
    "ServerError",
    "LMTransportError",
)


JSON_MODE_MARKERS = ("response_format", "json_schema", "json_object", "schema")


def refuses_json_mode(exc: BaseException, status: int | None = None) -> bool:
    """True when a failed JSON-mode request looks like the endpoint refusing JSON mode.

    A 400 or 422 is a refusal. A 500 or 501 counts only when its message is about
    the response format (llama.cpp answers 500 ``response_format type must be one
    of ...``): any other server error is transient and is retried, never taken as a
    reason to give up JSON mode for good.
    """
    code = status if status is not None else status_code_of(exc)
    if code in (400, 422):
        return True
    if code in (500, 501):
        text = str(exc).lower()
        return any(marker in text for marker in JSON_MODE_MARKERS)
    return False


def retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``retry-after``
    (or an error's own ``retry_after`` in seconds, as DSPy's errors carry it)."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, (int, float)) and not isinstance(hint, bool):
        return float(hint)
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures of one model call are retried.

    Args:
        max_attempts: Total tries per call, the first included (1 disables retries).
        initial_wait: Base of the exponential backoff, in seconds.
        max_wait: Cap on one wait, also applied to a server's ``retry-after``.

    Example:
        >>> from afnio_langchain.models import RetryPolicy
        >>> RetryPolicy(max_attempts=3, initial_wait=0.1).max_attempts
        3
    """

    max_attempts: int = 4
    initial_wait: float = 0.5
    max_wait: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after_seconds(exc) if exc else None
        if hinted is not None:
            return min(max(hinted, 0.0), self.max_wait)
        return wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait)(state)

    def backoff(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        hinted = retry_after_seconds(exc) if exc is not None else None
        if hinted is not None:
            return min(max(hinted, 0.0), self.max_wait)
        return random.uniform(0, min(self.max_wait, self.initial_wait * 2**attempt))

    async def call(
        self,
        func: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException], Any] | None = None,
    ) -> T:
        """Await ``func()`` and retry it on transient failures; re-raise the last error."""
        try:  # the first attempt runs bare: most calls succeed, and tenacity costs CPU
            return await func()
        except Exception as exc:
            if self.max_attempts <= 1 or not is_transient(exc):
                raise
            first_failure: list[BaseException] = [exc]

        async def attempt() -> T:
            if first_failure:  # tenacity's attempt 1 is the one that already failed
                raise first_failure.pop()
            return await func()

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None:
                on_retry(state.outcome.exception())

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for state in retrying:
            with state:
                return await attempt()
        raise AssertionError("unreachable: tenacity re-raises the last error")
