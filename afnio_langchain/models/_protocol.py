"""The one client protocol every model adapter speaks.

The engine, optimizers and evaluators only ever call :meth:`ModelClient.acomplete`
with plain ``{"role", "content"}`` messages and a purpose; adapters translate to a
LangChain chat model, an ``openai`` client or a ``dspy.LM``.
"""

from __future__ import annotations

import abc
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

from afnio_langchain._aio import run_sync
from afnio_langchain.models._cache import (
    CACHED_PURPOSES,
    cache_key,
    cached_completion,
    resolve_cache,
    store_completion,
)
from afnio_langchain.models._limits import call_slots
from afnio_langchain.models._retry import DEFAULT_ATTEMPT_TIMEOUT, RetryPolicy, within
from afnio_langchain.models._secrets import redact_exception
from afnio_langchain.models._usage import PURPOSES, record_call, record_usage

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""


class InputTooLongError(ValueError):
    """A request is longer than the client's ``max_input_chars``; nothing was sent.

    Attributes:
        chars: The request's length in characters (all message contents).
        limit: The limit it exceeds.
    """

    def __init__(self, chars: int, limit: int, detail: str) -> None:
        self.chars = chars
        self.limit = limit
        super().__init__(
            f"request of {chars} characters exceeds max_input_chars={limit} ({detail}); "
            "nothing was sent. Shorten the input (or the feedback), or raise the client's "
            "max_input_chars"
        )


class MalformedReplyError(RuntimeError):
    """The server answered, but not with a usable reply (a body that is not a chat
    completion, a stream that ended before its finish). Retried as transient."""

    transient = True


CUT_OFF_REASONS = frozenset({"length", "max_tokens", "max_output_tokens"})
"""Finish reasons of a reply ended by the token limit (OpenAI, Anthropic, Gemini)."""
COMPLETE_REASONS = frozenset({"stop", "end_turn", "stop_sequence", "eos", "eos_token"})
"""Finish reasons of a reply the model ended itself."""


@dataclass
class Completion:
    """One model reply, with the figures needed for usage counting.

    ``finish_reason`` is what the provider said ended the reply (``"stop"``,
    ``"length"``...), None when it does not say. ``unanswered`` is set by an adapter
    when the reply holds no answer although its finish reason does not say so:
    ``"refusal"`` (OpenAI's ``message.refusal``) or ``"tool_calls"`` (tool calls and no
    text); :attr:`unfinished` says either.

    Example:
        >>> from afnio_langchain.models import Completion, as_model_client
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> client = as_model_client(ScriptedChatModel(forward="Paris"))
        >>> reply = client.complete([{"role": "user", "content": "Capital of France?"}])
        >>> reply.text, reply.model, reply.input_tokens, reply.output_tokens
        ('Paris', 'scripted', 3, 1)
        >>> Completion("The answer is", "m", finish_reason="length").cut_off
        True
        >>> Completion("", "m", finish_reason="content_filter").unfinished
        'content_filter'
        >>> Completion("", "m", finish_reason="stop", unanswered="refusal").unfinished
        'refusal'
    """

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    raw: Any = field(default=None, repr=False)
    cached_input_tokens: int = field(default=0, repr=False)
    """Prompt tokens the provider served from its prompt cache (part of input_tokens)."""
    from_cache: bool = field(default=False, repr=False)
    """True when an LLM cache answered: no model call was made."""
    finish_reason: str | None = None
    unanswered: str | None = field(default=None, repr=False)
    """``"refusal"`` or ``"tool_calls"`` when the reply holds no answer (see above)."""

    @property
    def cut_off(self) -> bool:
        """Whether the token limit (``max_tokens``) ended the reply."""
        return self.finish_reason is not None and self.finish_reason.lower() in CUT_OFF_REASONS

    @property
    def complete(self) -> bool:
        """Whether the model ended the reply itself (or the provider does not say):
        not cut by ``max_tokens``, a content filter or anything else, and an answer
        (not a refusal, not tool calls alone)."""
        if self.unanswered is not None:
            return False
        return self.finish_reason is None or self.finish_reason.lower() in COMPLETE_REASONS

    @property
    def unfinished(self) -> str | None:
        """Why the reply is not the model's answer, None when it is, or when the token
        limit cut it (:attr:`cut_off`): :attr:`unanswered`, else the provider's finish
        reason when it is neither complete nor cut-off (``"content_filter"``,
        ``"tool_calls"``...)."""
        if self.unanswered is not None:
            return self.unanswered
        reason = self.finish_reason
        if reason is None:
            return None
        lowered = reason.lower()
        if lowered in COMPLETE_REASONS or lowered in CUT_OFF_REASONS:
            return None
        return reason


_UNBUILT: Any = object()


class DeferredRawCompletion(Completion):
    """A :class:`Completion` whose ``raw`` is built the first time it is read.

    For adapters whose ``raw`` is an object that costs more to build than the reply's
    text and counts (a LangChain message), and that most callers never read. Made
    with :meth:`of`; equal to the plain :class:`Completion` with the same fields, and
    pickled and copied as one.

    Example:
        >>> from afnio_langchain.models._protocol import Completion, DeferredRawCompletion
        >>> reply = DeferredRawCompletion.of(Completion("hi", "m"), lambda: {"built": True})
        >>> reply.text, reply.raw, reply == Completion("hi", "m", raw={"built": True})
        ('hi', {'built': True}, True)
    """

    @classmethod
    def of(cls, completion: Completion, build_raw: Callable[[], Any]) -> DeferredRawCompletion:
        """``completion`` (its ``raw`` left out) with ``raw`` from ``build_raw()``,
        called once, when ``raw`` is first read."""
        reply = cls.__new__(cls)
        values = dict(completion.__dict__)
        values.pop("raw", None)
        reply.__dict__.update(values)
        reply._raw = _UNBUILT
        reply._build_raw = build_raw
        return reply

    @property  # type: ignore[override]
    def raw(self) -> Any:
        raw = self._raw
        if raw is _UNBUILT:  # two threads reading at once may both build: either wins
            build = self._build_raw
            raw = build() if build is not None else self._raw
            self._raw = raw
            self._build_raw = None
        return raw

    @raw.setter
    def raw(self, value: Any) -> None:  # also the dataclass __init__'s (replace())
        self._raw = value
        self._build_raw: Callable[[], Any] | None = None

    def _plain(self) -> Completion:
        return Completion(*(getattr(self, f.name) for f in fields(Completion)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Completion):
            return self._plain() == (other._plain() if isinstance(other, DeferredRawCompletion) else other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as Completion's

    def __reduce__(self) -> tuple[Any, ...]:
        return Completion, tuple(getattr(self, f.name) for f in fields(Completion))


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

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion
        >>> from afnio_langchain.models import Completion, ModelClient
        >>> class Echo:  # no base class needed: a model_name and an async acomplete
        ...     model_name = "echo"
        ...     async def acomplete(self, messages, *, purpose="forward", json_schema=None, **params):
        ...         return Completion(messages[-1]["content"].upper(), self.model_name)
        >>> isinstance(Echo(), ModelClient)
        True
        >>> ChatCompletion.apply(Echo(), [{"role": "user", "content": [Variable("hi")]}]).data
        'HI'
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

    Args:
        retry: Retry policy for transient failures.
        max_input_chars: Refuse (with :class:`InputTooLongError`, before sending) any
            request whose message contents add up to more characters than this; None
            (the default) sends everything and leaves the limit to the provider.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion
        >>> from afnio_langchain.models import BaseModelClient, Completion, track_usage
        >>> class Shouter(BaseModelClient):
        ...     model_name = "shouter"
        ...     async def _agenerate(self, messages, json_schema, params):
        ...         text = messages[-1]["content"].upper()
        ...         return Completion(text, self.model_name, input_tokens=1, output_tokens=1)
        >>> with track_usage() as usage:
        ...     reply = ChatCompletion.apply(Shouter(), [{"role": "user", "content": [Variable("hi")]}])
        >>> reply.data, usage.by_model()["shouter"].calls
        ('HI', 1)
    """

    model_name: str = "unknown"
    cache: Any = None
    """LLM cache for forward calls (see ``models/_cache.py``): None uses LangChain's
    global cache when one is set (``set_llm_cache``), False never caches, a
    ``BaseCache`` is used instead."""
    caches_itself = False
    """True for adapters whose model has its own cache (LangChain, DSPy)."""

    def cache_identity(self) -> str:
        """What tells this client's replies apart from other clients' in a cache key."""
        return f"{type(self).__module__}.{type(self).__qualname__}:{self.model_name}"

    def __init__(
        self, *, retry: RetryPolicy | None = None, max_input_chars: int | None = None
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.max_input_chars = max_input_chars

    @property
    def max_input_chars(self) -> int | None:
        """The longest request (in characters of message content) this client sends."""
        return self._max_input_chars

    @max_input_chars.setter
    def max_input_chars(self, value: int | None) -> None:
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"max_input_chars must be a positive int or None, got {value!r}")
        self._max_input_chars = value

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
        messages = self._checked(messages, purpose)

        def count_retry(_exc: BaseException) -> None:
            record_usage(self.model_name, purpose, calls=0, retries=1)

        def attempt() -> Awaitable[Completion]:  # not a coroutine: one frame less per call
            return self._agenerate(messages, json_schema, {**params, "purpose": purpose})

        cache = None
        if not self.caches_itself and purpose in CACHED_PURPOSES:
            cache = resolve_cache(self.cache)
        if cache is not None:
            key = cache_key(self.cache_identity(), messages, json_schema, params)
            hit = await cached_completion(cache, key, self.model_name)
            if hit is not None:
                record_usage(self.model_name, purpose, calls=0, cache_hits=1)
                return hit

        async with call_slots():
            try:
                result = await self.retry.call(
                    attempt, count_retry, timeout=self.attempt_timeout(), what=self._what()
                )
            except BaseException as exc:
                record_usage(self.model_name, purpose, calls=0, failures=1)
                redact_exception(exc)  # providers may echo the key in error bodies
                raise
        if result.from_cache:  # the model's own cache answered (LangChain, DSPy)
            record_usage(self.model_name, purpose, calls=0, cache_hits=1)
            return result
        record_call(
            self.model_name,
            purpose,
            result.input_tokens,
            result.output_tokens,
            result.cached_input_tokens,
            int(result.cut_off),
        )
        if cache is not None:
            await store_completion(cache, key, result)
        return result

    def _checked(self, messages: Sequence[Message], purpose: str) -> list[Message]:
        """``messages`` validated and cleaned, once the purpose and length are checked."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        messages = validate_messages(messages)
        check_input_length(
            messages, getattr(self, "_max_input_chars", None), self.model_name, purpose
        )
        return messages

    def attempt_timeout(self) -> float:
        """Seconds one attempt may take, reply body included: the retry policy's
        ``timeout``; else the client's own (:meth:`_client_timeout`) plus a tenth (so
        that the client's own timeout fires first when a server goes silent, and this
        deadline when a reply trickles in); else 600 s."""
        if self.retry.timeout is not None:
            return self.retry.timeout
        own = self._client_timeout()
        return DEFAULT_ATTEMPT_TIMEOUT if own is None else own * 1.1 + 0.05

    def _client_timeout(self) -> float | None:
        """The wrapped client's own timeout in seconds, if it has one (adapters say)."""
        return None

    def _what(self) -> str:
        return f"model {self.model_name!r}"

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
        """Stream the reply's text, under the same retry policy and deadline as
        :meth:`acomplete`: failures before the first text chunk are retried; after
        it (text already shown) they surface. Usage is counted once the stream ends."""
        async with contextlib.aclosing(
            self.astream_reply(messages, purpose=purpose, **params)
        ) as pieces:
            async for piece in pieces:
                if isinstance(piece, str):
                    yield piece

    async def astream_reply(
        self, messages: Sequence[Message], *, purpose: str = "forward", **params: Any
    ) -> AsyncIterator[str | Completion]:
        """:meth:`astream`, ending with the whole reply as a :class:`Completion` (its
        finish reason, counts and marks: :attr:`~Completion.cut_off`,
        :attr:`~Completion.unfinished`), where the adapter gave one.

        Example:
            >>> from afnio_langchain._aio import run_sync
            >>> from afnio_langchain.models import as_model_client
            >>> from afnio_langchain.testing import ScriptedChatModel
            >>> client = as_model_client(ScriptedChatModel(forward="Paris"))
            >>> async def read():
            ...     return [p async for p in client.astream_reply([{"role": "user", "content": "?"}])]
            >>> *chunks, reply = run_sync(read)
            >>> "".join(chunks), type(reply).__name__, reply.text
            ('Paris', 'Completion', 'Paris')
        """
        messages = self._checked(messages, purpose)
        params = {**params, "purpose": purpose}
        seconds = self.attempt_timeout()

        def count_retry(_exc: BaseException) -> None:
            record_usage(self.model_name, purpose, calls=0, retries=1)

        async def opened() -> tuple[AsyncIterator[tuple[str, Completion | None]], list, float]:
            """One attempt up to its first text chunk (or its end): what it read so far."""
            stream = self._astream(messages, params)
            began = time.monotonic()
            read: list[tuple[str, Completion | None]] = []
            try:
                async for chunk, total in stream:
                    read.append((chunk, total))
                    if chunk or total is not None:
                        break
            except BaseException:
                await _aclose(stream)
                raise
            return stream, read, began

        async with call_slots():
            stream = None
            try:
                stream, read, began = await self.retry.call(
                    opened, count_retry, timeout=seconds, what=self._what()
                )
                pending = iter(read)
                while True:
                    item = next(pending, None)
                    if item is None:
                        remaining = max(seconds - (time.monotonic() - began), 0.001)
                        try:
                            item = await within(stream.__anext__, remaining, self._what())
                        except StopAsyncIteration:
                            return
                    chunk, total = item
                    if total is not None:
                        record_usage(
                            self.model_name,
                            purpose,
                            input_tokens=total.input_tokens,
                            output_tokens=total.output_tokens,
                            cached_input_tokens=total.cached_input_tokens,
                            cut_off=int(total.cut_off),
                        )
                        yield total
                    elif chunk:
                        yield chunk
            except BaseException as exc:
                if isinstance(exc, Exception):
                    record_usage(self.model_name, purpose, calls=0, failures=1)
                    redact_exception(exc)
                raise
            finally:
                if stream is not None:
                    await _aclose(stream)

    def complete(self, messages: Sequence[Message], **kwargs: Any) -> Completion:
        """Synchronous :meth:`acomplete` (works inside a running event loop too)."""
        return run_sync(lambda: self.acomplete(messages, **kwargs))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r})"


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


_SURROGATE = re.compile("[\ud800-\udfff]")
_ROLES = ("system", "user", "assistant")


def clean_text(text: str) -> str:
    r"""Text as it can be sent: surrogate pairs joined, lone surrogates (from bytes
    decoded with ``surrogateescape``) replaced by U+FFFD, NUL characters removed.
    Every other character, control characters included, is kept.

    Example:
        >>> from afnio_langchain.models._protocol import clean_text
        >>> clean_text("caf\udce9\x00 ok\t") == "caf\ufffd ok\t"
        True
    """
    if not text.isascii() and _SURROGATE.search(text):  # isascii: no scan of plain text
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text


def check_input_length(
    messages: Sequence[Message], limit: int | None, model: str, purpose: str
) -> None:
    """Raise :class:`InputTooLongError` when ``messages`` exceed ``limit`` characters."""
    if limit is None:
        return
    sizes = [len(m["content"]) for m in messages]
    total = sum(sizes)
    if total > limit:
        k = max(range(len(sizes)), key=sizes.__getitem__)
        raise InputTooLongError(
            total,
            limit,
            f"model {model!r}, {purpose} call; the longest is message {k} "
            f"({messages[k]['role']}, {sizes[k]} characters)",
        )


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Check the plain-message shape and return it as a list of clean messages
    (see :func:`clean_text`)."""
    if type(messages) is not list and (
        isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence)
    ):
        raise TypeError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise TypeError(
                f"message {i} must be a dict with a str 'content', got {message!r:.200}"
            )
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(f"message {i} has unknown role {role!r}")
        if not content.isascii() or "\x00" in content:  # plain text: no call to clean it
            content = clean_text(content)
        out.append({"role": role, "content": content})
    return out
