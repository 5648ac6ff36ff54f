"""The one retry policy for model calls, plain and streamed: transient failures are
retried with backoff (tenacity), each attempt within one deadline.

Transient: HTTP 408/409/429 and 5xx, timeouts, dropped connections, and replies that
arrived but cannot be used as a chat completion (a body that is not JSON or not
UTF-8, no ``choices``, a stream that ended before its finish). A ``retry-after`` (or
``retry-after-ms``) header is honoured, capped at ``max_wait``. Anything else (bad
request, authentication, a model error) surfaces at once.

Every adapter turns its client's own retries off (``max_retries=0`` on openai and
langchain-openai clients, ``num_retries=0`` on DSPy LMs), so ``max_attempts`` counts
requests.
"""

from __future__ import annotations

import asyncio
import math
import sys
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

from afnio_langchain.models._deadlines import Deadline, watchdog

T = TypeVar("T")

_HAS_UNCANCEL = sys.version_info >= (3, 11)  # Task.uncancel, which within() relies on
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
DEFAULT_ATTEMPT_TIMEOUT = 600.0
"""Seconds one attempt may take when neither the policy nor the client sets a timeout
(the ``openai`` client's own default)."""


class ReplyTimeoutError(TimeoutError):
    """An attempt took longer than its deadline, reply body included (httpx applies a
    client's timeout to each read, so a reply trickling one byte at a time would
    never trip it). Transient: retried like any timeout."""


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


UNRECOVERABLE_STATUS = frozenset({401, 403, 404})
"""A rejected key, a forbidden model, a model or endpoint that does not exist."""

_UNRECOVERABLE_NAME_MARKERS = (
    "AuthenticationError",
    "PermissionDenied",
    "LMAuthError",
    "LMBillingError",
    "LMConfigurationError",
    "LMNotConfiguredError",
    "LMUnsupportedModelError",
)


def is_unrecoverable(exc: BaseException) -> bool:
    """Whether :func:`unrecoverable_cause` finds a cause in ``exc``."""
    return unrecoverable_cause(exc) is not None


def unrecoverable_cause(exc: BaseException) -> BaseException | None:
    """The error in ``exc`` (itself, or one of its causes: a ``BackwardError`` from
    such a failure, a minibatch's item errors) that no retry and no later call can get
    past: the model rejects the key (401), forbids the call (403), does not exist (404),
    or is not configured (DSPy's ``LMAuthError``, ``LMNotConfiguredError``...); None
    when there is none.

    Example:
        >>> from afnio_langchain.models import is_unrecoverable
        >>> class AuthenticationError(Exception):
        ...     status_code = 401
        >>> is_unrecoverable(RuntimeError("backward failed")), is_unrecoverable(AuthenticationError())
        (False, True)
    """
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        code = status_code_of(error)
        if code is not None:
            if code in UNRECOVERABLE_STATUS:
                return error
        elif any(m in cls.__name__ for cls in type(error).__mro__ for m in _UNRECOVERABLE_NAME_MARKERS):
            return error
        pending.append(error.__cause__)
        items = getattr(error, "errors", None)  # a MinibatchError's item errors
        if isinstance(items, dict):
            pending.extend(e for e in items.values() if isinstance(e, BaseException))
    return None


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


OTHER_REFUSAL_MARKERS = (
    "context_length",
    "context length",
    "maximum context",
    "too many tokens",
    "content_filter",
    "content_policy",
    "content management policy",
    "model_not_found",
)
"""Words of a 400 that refuses the request for a reason JSON mode has nothing to do
with (too long, filtered, no such model): the same request without JSON mode would
fail the same way, and giving JSON mode up would then last for the client's life."""


def refuses_json_mode(exc: BaseException, status: int | None = None) -> bool:
    """True when a failed JSON-mode request looks like the endpoint refusing JSON mode.

    A 400 or 422 is a refusal, unless it names another reason
    (:data:`OTHER_REFUSAL_MARKERS`: the context length, a content filter). A 500 or 501 counts only when its message is about
    the response format (llama.cpp answers 500 ``response_format type must be one
    of ...``): any other server error is transient and is retried, never taken as a
    reason to give up JSON mode for good.
    """
    code = status if status is not None else status_code_of(exc)
    if code in (400, 422):
        text = str(exc).lower()
        return not any(marker in text for marker in OTHER_REFUSAL_MARKERS)
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


class AttemptDeadline(Deadline):
    """The deadline of one attempt, as a ``with`` block around its ``await`` in ``task``:
    past ``seconds`` the task is cancelled, and the block raises
    :class:`ReplyTimeoutError` (naming ``what``) instead of that cancellation. A
    caller's own cancel passes through as a cancel, and the task's cancel count is
    left as it was found (``asyncio.timeout``'s semantics). A ``with`` block, not a
    coroutine: the first attempt of every model call runs inside one.

    Example:
        >>> import asyncio
        >>> from afnio_langchain.models._retry import AttemptDeadline
        >>> async def main():
        ...     with AttemptDeadline(asyncio.current_task(), 0.01, "model 'm'"):
        ...         await asyncio.sleep(1)
        >>> try:
        ...     asyncio.run(main())
        ... except Exception as exc:
        ...     print(type(exc).__name__)
        ReplyTimeoutError
    """

    __slots__ = ("seconds", "what", "cancelling", "watchdog")

    def __init__(self, task: asyncio.Task[Any], seconds: float, what: str) -> None:
        self.task = task  # Deadline's fields set here: no super() call on the hot path
        self.expired = False
        self.seconds = seconds
        self.what = what

    def __enter__(self) -> AttemptDeadline:
        self.cancelling = self.task.cancelling()
        loop = self.task.get_loop()  # the running loop: no second lookup of it
        self.watchdog = watchdog(loop)
        self.watchdog.watch(self, loop.time() + self.seconds)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        self.watchdog.unwatch(self)
        if self.expired:  # its cancel is taken back once, here, whether or not it landed
            self.expired = False
            if self.task.uncancel() <= self.cancelling and kind is not None and issubclass(
                kind, asyncio.CancelledError
            ):
                raise _timed_out(self.what, self.seconds) from exc


async def within(func: Callable[[], Awaitable[T]], seconds: float, what: str) -> T:
    """``await func()``, raising :class:`ReplyTimeoutError` (naming ``what``) once
    ``seconds`` have passed; a TimeoutError ``func`` raises itself passes through."""
    task = asyncio.current_task() if _HAS_UNCANCEL else None
    if task is None:  # pragma: no cover - Python 3.10 (no Task.uncancel), or no task
        try:
            return await asyncio.wait_for(func(), seconds)
        except asyncio.TimeoutError as exc:
            raise _timed_out(what, seconds) from exc
    with AttemptDeadline(task, seconds, what):
        return await func()


def _bounded(timeout: float | None) -> bool:
    """Whether ``timeout`` sets a deadline (None and infinity set none)."""
    return timeout is not None and not math.isinf(timeout)


def _timed_out(what: str, seconds: float) -> ReplyTimeoutError:
    return ReplyTimeoutError(
        f"{what} gave no complete reply within {seconds:g} s (the deadline of one attempt, "
        "reply body included)"
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures of one model call are retried.

    Args:
        max_attempts: Requests per call, the first included (1 disables retries).
        initial_wait: Base of the exponential backoff, in seconds.
        max_wait: Cap on one wait, also applied to a server's ``retry-after``.
        timeout: Seconds one attempt may take in all, the whole reply included.
            None: the client's own timeout (the ``openai`` client's ``timeout``,
            ``ChatOpenAI(timeout=...)``), else 600 s.

    Example:
        >>> from afnio_langchain.models import RetryPolicy
        >>> policy = RetryPolicy(max_attempts=3, initial_wait=0.1, timeout=30)
        >>> policy.max_attempts, policy.timeout
        (3, 30)
    """

    max_attempts: int = 4
    initial_wait: float = 0.5
    max_wait: float = 30.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError("timeout must be a positive number of seconds or None")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after_seconds(exc) if exc else None
        if hinted is not None:
            return min(max(hinted, 0.0), self.max_wait)
        return wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait)(state)

    async def call(
        self,
        func: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException], Any] | None = None,
        *,
        timeout: float | None = None,
        what: str = "the model",
    ) -> T:
        """Await ``func()``, each attempt within ``timeout`` seconds (None: no limit),
        and retry it on transient failures; re-raise the last error.

        Args:
            func: One attempt.
            on_retry: Called with the error of each attempt that is retried.
            timeout: The attempt's deadline; past it, a :class:`ReplyTimeoutError`.
            what: Who is called, for the timeout's message.
        """
        try:  # the first attempt runs bare: most calls succeed, and tenacity costs CPU
            task = (
                asyncio.current_task(asyncio.get_running_loop())  # one loop lookup
                if _bounded(timeout) and _HAS_UNCANCEL
                else None
            )
            if task is None:
                return await func()
            with AttemptDeadline(task, timeout, what):  # type: ignore[arg-type]
                return await func()
        except Exception as exc:
            if self.max_attempts <= 1 or not is_transient(exc):
                raise
            first = exc
        return await self._retry(first, func, on_retry, timeout, what)

    async def _retry(
        self,
        first: BaseException,
        func: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException], Any] | None,
        timeout: float | None,
        what: str,
    ) -> T:
        """:meth:`call`'s retries after its first attempt failed with ``first`` (apart,
        so that the first attempt's frame holds no closure cells)."""
        first_failure: list[BaseException] = [first]
        bounded = _bounded(timeout)

        def attempt() -> Awaitable[T]:  # not a coroutine: one frame less per call
            return within(func, timeout, what) if bounded else func()  # type: ignore[arg-type]

        async def retried() -> T:
            if first_failure:  # tenacity's attempt 1 is the one that already failed
                raise first_failure.pop()
            return await attempt()

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
                return await retried()
        raise AssertionError("unreachable: tenacity re-raises the last error")
