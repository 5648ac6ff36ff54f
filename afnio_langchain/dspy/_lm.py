"""The reverse bridge: a DSPy engine backed by any LangChain chat model or model client.

DSPy 3.4 takes custom backends as *engines* (``complete(Request) -> Response``, and an
async twin) passed to ``dspy.LM(engine=..., async_engine=...)``; custom ``forward()``
LMs are deprecated (removed in 3.5). :func:`as_dspy_lm` builds such a ``dspy.LM`` over
a LangChain ``BaseChatModel``, an ``openai`` client or a
:class:`~afnio_langchain.models.ModelClient`, so a DSPy program runs on the same models
(and the same usage counts, retries and concurrency limit) as a LangChain app.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import replace as dataclass_replace
from typing import Any

from afnio_langchain.dspy._compat import require_dspy

dspy = require_dspy("A DSPy engine backed by a LangChain model (afnio_langchain.dspy._lm)")

from dspy import lm15
from dspy.dsp.utils.settings import thread_local_overrides

from afnio_langchain._aio import run_sync
from afnio_langchain.models import (
    PURPOSES,
    Completion,
    JsonSchema,
    Message,
    ModelClient,
    as_model_client,
    status_code_of,
)

LM_PREFIX = "afnio"
"""Provider prefix of the ``dspy.LM`` model strings built here (``"afnio/<model name>"``)."""

# Request.config fields carried to the model as completion arguments.
_CARRIED = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "frequency_penalty",
    "presence_penalty",
)
# Request.config fields no model client here can carry: refused, never dropped.
_REFUSED = (
    "tool_choice",
    "reasoning",
    "cache",
    "service_tier",
    "user_id",
    "store",
    "logprobs",
    "probabilities",
)
_ROLES = {"user": "user", "assistant": "assistant", "developer": "system"}
_CARRIED_CONTEXT = "afnio_carried_context"
"""The ``dspy.context`` setting :func:`carry_scopes` sets: the caller's contextvars."""


@contextlib.contextmanager
def carry_scopes() -> Iterator[None]:
    """Carry the package's scopes into the threads DSPy starts inside the block.

    :func:`~afnio_langchain.track_usage`, :func:`~afnio_langchain.concurrency_limit`,
    grad mode and LangChain's run tree are contextvars, and DSPy's thread pool
    (``dspy.Evaluate`` with ``num_threads`` > 1 or its default, ``Module.batch``,
    ``dspy.Parallel``) does not copy contextvars into its workers;
    it copies ``dspy.context`` settings. This block puts a snapshot of the caller's
    contextvars there, and :func:`as_dspy_lm`'s engine makes each call in a worker
    with the snapshot's values the worker does not set itself. Enter it inside the
    scopes to carry (it takes the snapshot on entry).

    Example:
        >>> import dspy
        >>> from afnio_langchain import track_usage
        >>> from afnio_langchain.dspy import as_dspy_lm, carry_scopes, chat_adapter_reply
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> lm = as_dspy_lm(ScriptedChatModel(forward=chat_adapter_reply({"answer": "Paris"})))
        >>> qa = dspy.Predict("question -> answer")
        >>> examples = [dspy.Example(question=f"Q{i}?").with_inputs("question") for i in range(4)]
        >>> with dspy.context(lm=lm), track_usage() as usage, carry_scopes():
        ...     _ = qa.batch(examples, num_threads=4, disable_progress_bar=True)
        >>> usage.total().calls
        4
    """
    with dspy.context(**{_CARRIED_CONTEXT: contextvars.copy_context()}):
        yield


def _in_carried_context(call: Callable[[], Any]) -> Any:
    """``call()``, with the contextvars :func:`carry_scopes` carried that this thread
    lacks (DSPy's own settings are left as DSPy's executor set them)."""
    carried = dspy.settings.get(_CARRIED_CONTEXT)
    if not isinstance(carried, contextvars.Context):
        return call()
    here = contextvars.copy_context()

    def body() -> Any:
        for var, value in carried.items():
            if var is not thread_local_overrides and var not in here:
                var.set(value)
        return call()

    return here.run(body)


def request_to_messages(request: lm15.Request) -> list[Message]:
    """The plain chat messages of a ``dspy.lm15.Request`` (text parts only).

    ``Request.system`` becomes a leading system message, ``developer`` messages become
    system messages.

    Raises:
        dspy.lm15.UnsupportedFeatureError: Tools, tool messages or non-text parts
            (images, audio...), which a text chat client cannot carry.
    """
    if request.tools:
        raise lm15.UnsupportedFeatureError(
            "tools are not supported by a LangChain-backed DSPy engine", feature="tools"
        )
    messages: list[Message] = []
    if request.system is not None:
        system = request.system
        text = (
            system
            if isinstance(system, str)
            else "".join(_part_text(part, f"system[{k}]") for k, part in enumerate(system))
        )
        messages.append({"role": "system", "content": text})
    for i, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise lm15.UnsupportedFeatureError(
                f"{message.role!r} messages are not supported by a LangChain-backed DSPy engine",
                feature=f"messages[{i}]",
            )
        content = "".join(
            _part_text(part, f"messages[{i}].parts[{k}]") for k, part in enumerate(message.parts)
        )
        messages.append({"role": role, "content": content})
    return messages


def _part_text(part: Any, where: str) -> str:
    if isinstance(part, lm15.TextPart):
        return part.text
    raise lm15.UnsupportedFeatureError(
        f"{type(part).__name__} at {where} is not supported by a LangChain-backed DSPy engine "
        "(text only)",
        feature=where,
    )


def request_params(config: lm15.Config) -> tuple[dict[str, Any], JsonSchema | None]:
    """Completion arguments and JSON schema for a ``dspy.lm15.Config``.

    Raises:
        dspy.lm15.UnsupportedFeatureError: A setting the model client cannot carry.
    """
    params = {
        name: getattr(config, name) for name in _CARRIED if getattr(config, name, None) is not None
    }
    if config.stop:
        params["stop"] = list(config.stop)
    for name in _REFUSED:
        if getattr(config, name, None) is not None:
            raise lm15.UnsupportedFeatureError(
                f"Config.{name} is not supported by a LangChain-backed DSPy engine",
                feature=f"config.{name}",
            )
    if getattr(config, "extensions", None):
        raise lm15.UnsupportedFeatureError(
            f"Config.extensions {sorted(config.extensions)} are not supported by a "
            "LangChain-backed DSPy engine; bind provider settings on the chat model instead",
            feature="config.extensions",
        )
    return params, _json_schema(config.response_format)


def _json_schema(response_format: Mapping[str, Any] | None) -> JsonSchema | None:
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return JsonSchema("response", {"type": "object"})
    schema = response_format.get("schema")
    if kind == "json_schema" and isinstance(schema, Mapping):
        return JsonSchema(str(response_format.get("name") or "response"), dict(schema))
    raise lm15.UnsupportedFeatureError(
        f"response_format {dict(response_format)!r:.200} is not supported; expected "
        "json_object or json_schema",
        feature="config.response_format",
    )


def finish_reason_of(completion: Completion) -> str:
    """The lm15 finish reason of a model client's reply: ``"length"`` for one the token
    limit cut, ``"content_filter"`` for a filtered or refused one, ``"tool_call"`` for
    tool calls alone, else ``"stop"``, so that DSPy sees what ended the reply (it warns
    of a truncated one).

    Example:
        >>> from afnio_langchain.dspy._lm import finish_reason_of
        >>> from afnio_langchain.models import Completion
        >>> [finish_reason_of(Completion("", "m", finish_reason=r))
        ...  for r in ("length", "content_filter", "stop", None)]
        ['length', 'content_filter', 'stop', 'stop']
    """
    if completion.cut_off:
        return "length"
    why = completion.unfinished
    if why in ("content_filter", "refusal"):
        return "content_filter"
    if why == "tool_calls":
        return "tool_call"
    return "stop"


def completion_to_response(completion: Completion, model: str) -> lm15.Response:
    """A model client's reply as a ``dspy.lm15.Response`` (text, token counts and what
    ended it: :func:`finish_reason_of`)."""
    return lm15.Response(
        id=None,
        model=completion.model or model,
        message=lm15.Message.assistant(lm15.TextPart(completion.text)),
        finish_reason=finish_reason_of(completion),
        usage=lm15.Usage(
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cache_read_tokens=completion.cached_input_tokens,
        ),
    )


_PIECE = re.compile(r"\s*\S+\s*|\s+")


def replay_events(response: lm15.Response) -> Iterator[Any]:
    """The finished ``response`` as lm15 stream events, its text one word at a time.

    DSPy's ``StreamListener`` finds a field's start and end markers across chunks; a
    reply sent as one text delta streams nothing to it, so the text is cut into words
    (lossless: the deltas add up to the text).

    Example:
        >>> from dspy import lm15
        >>> from afnio_langchain.dspy._lm import replay_events
        >>> response = lm15.Response(id=None, model="m", finish_reason="stop",
        ...     message=lm15.Message.assistant(lm15.TextPart("Rome is  big.")), usage=lm15.Usage())
        >>> [e.delta.text for e in replay_events(response) if isinstance(e, lm15.StreamDeltaEvent)]
        ['Rome ', 'is  ', 'big.']
    """
    for event in lm15.response_to_events(response):
        delta = getattr(event, "delta", None)
        if not isinstance(delta, lm15.TextDelta) or not delta.text:
            yield event
            continue
        for k, piece in enumerate(_PIECE.findall(delta.text)):
            if k == 0:  # the first piece carries the delta's logprobs, as the whole did
                yield lm15.StreamDeltaEvent(delta=dataclass_replace(delta, text=piece))
            else:
                yield lm15.StreamDeltaEvent(
                    delta=lm15.TextDelta(text=piece, part_index=delta.part_index)
                )


def to_lm15_error(exc: BaseException) -> BaseException:
    """The ``dspy.lm15`` error DSPy expects for a model client's failure.

    Failures with an HTTP status, timeouts and dropped connections become the matching
    lm15 error (DSPy maps those to its ``LMError`` family); anything else is returned
    unchanged, and DSPy reports it as unexpected with its cause kept.
    """
    if isinstance(exc, lm15.LM15Error):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    status = status_code_of(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or status == 408:
        return lm15.TimeoutError(message, status=status)
    if status is not None:
        if status in (401, 403):
            return lm15.AuthError(message, status=status)
        if status == 429:
            return lm15.RateLimitError(message, status=status)
        if status >= 500:
            return lm15.ServerError(message, status=status)
        if 400 <= status < 500:
            return lm15.InvalidRequestError(message, status=status)
    if isinstance(exc, ConnectionError):
        return lm15.TransportError(message)
    return exc


class ModelClientEngine:
    """A DSPy engine (``complete(Request) -> Response``) backed by a model client.

    Calls go through the package's client protocol: they are counted by
    :func:`~afnio_langchain.track_usage` under ``purpose``, retried by its retry
    policy, held to :func:`~afnio_langchain.concurrency_limit`, and a LangChain model's
    runs show in LangChain tracing. Failures reach DSPy as ``dspy.lm15`` errors.
    Streaming replays the finished reply as stream events.

    Args:
        model: A LangChain ``BaseChatModel``, an ``openai`` client (with
            ``model_name``) or a :class:`~afnio_langchain.models.ModelClient`.
        model_name: The model name, needed with an ``openai`` client.
        purpose: The usage-count role of these calls: ``forward`` (a program's
            predictions), or ``optimizer`` for a DSPy optimizer's proposal model.

    Raises:
        TypeError: ``model`` is not a model.
        ValueError: ``purpose`` is unknown.

    Example:
        >>> from dspy import lm15
        >>> from afnio_langchain.dspy import ModelClientEngine
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> engine = ModelClientEngine(ScriptedChatModel(forward="Paris"))
        >>> request = lm15.Request(model="afnio/scripted",
        ...                        messages=(lm15.Message.user("Capital of France?"),))
        >>> engine.complete(request).text
        'Paris'
    """

    def __init__(
        self, model: Any, *, model_name: str | None = None, purpose: str = "forward"
    ) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        self.client: ModelClient = as_model_client(model, model_name)
        self.purpose = purpose

    @property
    def model_name(self) -> str:
        return str(self.client.model_name or "unknown")

    async def acomplete(self, request: lm15.Request) -> lm15.Response:
        """Answer one request through the model client."""
        messages = request_to_messages(request)
        params, schema = request_params(request.config)
        try:
            completion = await self.client.acomplete(
                messages, purpose=self.purpose, json_schema=schema, **params
            )
        except Exception as exc:
            error = to_lm15_error(exc)
            if error is exc:
                raise
            raise error from exc
        return completion_to_response(completion, self.model_name)

    def complete(self, request: lm15.Request) -> lm15.Response:
        """Synchronous :meth:`acomplete` (works inside a running event loop too); in a
        DSPy worker thread, with the scopes :func:`carry_scopes` carried."""
        return _in_carried_context(lambda: run_sync(lambda: self.acomplete(request)))

    def stream(self, request: lm15.Request) -> Iterator[Any]:
        """The finished reply as lm15 stream events (start, its text word by word, end:
        :func:`replay_events`)."""
        return replay_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the model client is borrowed."""

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelClientEngine:
        """The engine itself: it holds only the borrowed client and a purpose, so a deep
        copy of a program (``Module.deepcopy``, which every DSPy optimizer makes) keeps
        calling the user's model rather than a copy of it."""
        return self

    def __repr__(self) -> str:
        return f"ModelClientEngine(model_name={self.model_name!r}, purpose={self.purpose!r})"


class AsyncModelClientEngine:
    """The async counterpart of :class:`ModelClientEngine` (``await complete(Request)``),
    which DSPy uses for ``lm.acall`` and async programs.

    Example:
        >>> import asyncio
        >>> from dspy import lm15
        >>> from afnio_langchain.dspy import AsyncModelClientEngine, ModelClientEngine
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> engine = AsyncModelClientEngine(ModelClientEngine(ScriptedChatModel(forward="4")))
        >>> request = lm15.Request(model="afnio/scripted", messages=(lm15.Message.user("2+2?"),))
        >>> asyncio.run(engine.complete(request)).text
        '4'
    """

    def __init__(self, engine: ModelClientEngine) -> None:
        if not isinstance(engine, ModelClientEngine):
            raise TypeError(f"expected a ModelClientEngine, got {type(engine).__name__}")
        self.engine = engine

    async def complete(self, request: lm15.Request) -> lm15.Response:
        return await self.engine.acomplete(request)

    async def stream(self, request: lm15.Request) -> AsyncIterator[Any]:
        for event in replay_events(await self.engine.acomplete(request)):
            yield event

    async def aclose(self) -> None:
        """Nothing to release: the model client is borrowed."""

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncModelClientEngine:
        """The engine itself, as :meth:`ModelClientEngine.__deepcopy__`."""
        return self


def as_dspy_lm(
    model: Any,
    *,
    model_name: str | None = None,
    purpose: str = "forward",
    cache: bool = False,
    num_retries: int = 0,
    **lm_kwargs: Any,
) -> dspy.LM:
    """A ``dspy.LM`` that answers through a LangChain chat model or a model client.

    The LM's model string is ``"afnio/<model name>"``. Generation settings given here
    (``temperature``, ``max_tokens``...) or per call reach the model as completion
    arguments; settings a chat client cannot carry (tools, images, reasoning
    budgets) are refused with ``dspy.LMUnsupportedFeatureError``, never dropped.

    Args:
        model: A LangChain ``BaseChatModel``, an ``openai`` client (with
            ``model_name``) or a :class:`~afnio_langchain.models.ModelClient`.
        model_name: The model name, needed with an ``openai`` client.
        purpose: Usage-count role of the calls (``forward``; ``optimizer`` for the
            proposal or reflection model of a DSPy optimizer).
        cache: Use DSPy's response cache. Off by default: a LangChain model has its
            own cache (``set_llm_cache``), and DSPy's disk cache keys on the model
            string, which two different chat models may share.
        num_retries: DSPy's own retries. 0 by default: the model client already
            retries transient failures with the package's retry policy.
        **lm_kwargs: Other ``dspy.LM`` arguments (``temperature``, ``max_tokens``,
            ``callbacks``...). Connection settings (``api_key``, ``api_base``) are
            refused by DSPy: configure them on the chat model.

    Example:
        >>> import dspy
        >>> from afnio_langchain.dspy import as_dspy_lm
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> chat = ScriptedChatModel(forward="[[ ## answer ## ]]\\nParis\\n\\n[[ ## completed ## ]]")
        >>> lm = as_dspy_lm(chat)
        >>> lm.model
        'afnio/scripted'
        >>> with dspy.context(lm=lm):
        ...     dspy.Predict("question -> answer")(question="Capital of France?").answer
        'Paris'
    """
    engine = ModelClientEngine(model, model_name=model_name, purpose=purpose)
    return dspy.LM(
        f"{LM_PREFIX}/{engine.model_name}",
        engine=engine,
        async_engine=AsyncModelClientEngine(engine),
        cache=cache,
        num_retries=num_retries,
        **lm_kwargs,
    )


def bridged_client(lm: Any) -> ModelClient | None:
    """The model client behind a ``dspy.LM`` made by :func:`as_dspy_lm` (None for any
    other LM)."""
    engine = getattr(lm, "_engine_spec", None)
    return engine.client if isinstance(engine, ModelClientEngine) else None


__all__ = [
    "AsyncModelClientEngine",
    "bridged_client",
    "LM_PREFIX",
    "ModelClientEngine",
    "as_dspy_lm",
    "carry_scopes",
    "completion_to_response",
    "request_params",
    "request_to_messages",
    "to_lm15_error",
]
