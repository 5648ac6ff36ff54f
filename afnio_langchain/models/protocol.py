"""The one client protocol every model adapter speaks.

The engine, optimizers and evaluators only ever call :meth:`ModelClient.acomplete`
with plain ``{"role", "content"}`` messages and a purpose; adapters translate to a
LangChain chat model, an ``openai`` client or a ``dspy.LM``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from afnio_langchain._aio import run_sync
from afnio_langchain.models.limits import call_slot
from afnio_langchain.models.retry import RetryPolicy, is_transient
from afnio_langchain.models.usage import PURPOSES, record_usage

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""


@dataclass
class Completion:
    """One model reply, with the figures needed for usage counting."""

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    raw: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class JsonSchema:
    """A JSON schema a reply must follow; adapters use the provider's JSON mode for it."""

    name: str
    schema: dict[str, Any]


@runtime_checkable
class ModelClient(Protocol):
    """What the package needs from a model: one async chat call.

    Any object with this method and a ``model_name`` can be passed wherever a model
    is expected, with no wrapper.
    """

    model_name: str

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        purpose: str = "forward",
        json_schema: JsonSchema | None = None,
        **params: Any,
    ) -> Completion: ...


class BaseModelClient(abc.ABC):
    """Shared behaviour of the adapters: concurrency slot, retries and usage counting.

    Subclasses implement :meth:`_agenerate`, one attempt of one call.
    """

    model_name: str = "unknown"

    def __init__(self, *, retry: RetryPolicy | None = None) -> None:
        self.retry = retry or RetryPolicy()

    @abc.abstractmethod
    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        """One attempt at one call (abstract: each adapter implements it)."""

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        purpose: str = "forward",
        json_schema: JsonSchema | None = None,
        **params: Any,
    ) -> Completion:
        """Send ``messages`` and return the reply, retrying transient failures.

        Args:
            messages: Plain chat messages.
            purpose: One of ``forward``, ``backward``, ``optimizer``, ``judge``; used
                for usage counts and passed to LangChain as run metadata.
            json_schema: Ask for JSON following this schema (provider JSON mode where
                available; the caller still parses tolerantly).
            **params: Completion arguments (``temperature``, ``max_tokens``, ...).
        """
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        messages = validate_messages(messages)

        def count_retry(_exc: BaseException) -> None:
            record_usage(self.model_name, purpose, calls=0, retries=1)

        async def attempt() -> Completion:
            return await self._agenerate(messages, json_schema, {**params, "purpose": purpose})

        async with call_slot():
            try:
                result = await self.retry.call(attempt, on_retry=count_retry)
            except BaseException:
                record_usage(self.model_name, purpose, calls=0, failures=1)
                raise
        record_usage(
            self.model_name,
            purpose,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
        )
        return result

    async def _astream(
        self, messages: Sequence[Message], params: dict[str, Any]
    ) -> AsyncIterator[tuple[str, Completion | None]]:
        """Stream one attempt as ``(text_chunk, None)`` pairs and end with ``("", total)``.

        The default makes one non-streaming call; adapters override it to stream."""
        completion = await self._agenerate(messages, None, params)
        yield completion.text, None
        yield "", completion

    async def astream(
        self, messages: Sequence[Message], *, purpose: str = "forward", **params: Any
    ) -> AsyncIterator[str]:
        """Stream the reply's text. Transient failures before the first chunk are
        retried like :meth:`acomplete`; usage is counted once the stream ends."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        messages = validate_messages(messages)
        params = {**params, "purpose": purpose}
        async with call_slot():
            attempts = 0
            while True:
                attempts += 1
                started = False
                try:
                    async for chunk, total in self._astream(messages, params):
                        if total is not None:
                            record_usage(
                                self.model_name,
                                purpose,
                                input_tokens=total.input_tokens,
                                output_tokens=total.output_tokens,
                            )
                        elif chunk:
                            started = True
                            yield chunk
                    return
                except Exception as exc:
                    if started or attempts >= self.retry.max_attempts or not is_transient(exc):
                        record_usage(self.model_name, purpose, calls=0, failures=1)
                        raise
                    record_usage(self.model_name, purpose, calls=0, retries=1)
                    await asyncio.sleep(self.retry.backoff(attempts, exc))

    def complete(self, messages: Sequence[Message], **kwargs: Any) -> Completion:
        """Synchronous :meth:`acomplete` (works inside a running event loop too)."""
        return run_sync(lambda: self.acomplete(messages, **kwargs))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r})"


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Check the plain-message shape and return it as a list."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise TypeError(
                f"message {i} must be a dict with a str 'content', got {message!r:.200}"
            )
        if message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} has unknown role {message.get('role')!r}")
        out.append({"role": message["role"], "content": message["content"]})
    return out
