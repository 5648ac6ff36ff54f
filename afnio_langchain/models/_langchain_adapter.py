"""Adapter: any LangChain ``BaseChatModel`` as a :class:`ModelClient`.

For the langchain-openai family (``ChatOpenAI``, ``AzureChatOpenAI`` and the
models built on them), each call runs on a copy of the model whose openai client
makes one request per attempt (``max_retries=0``, so the package's
:class:`RetryPolicy` alone retries and ``max_attempts`` counts requests), over an
HTTP client of the running event loop (sync and async calls from one notebook share
no connection pool) that checks each reply body before langchain-openai reads it.
"""

from __future__ import annotations

import codecs
import json
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import openai
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig, ensure_config

from afnio_langchain.models._cache import CACHED_PURPOSES
from afnio_langchain.models._lean_completions import LeanChatClient
from afnio_langchain.models._openai_adapter import (
    CHAT_COMPLETIONS_PATH,
    JSON_MODES,
    aiohttp_usable,
    response_format_for,
    seconds_of,
)
from afnio_langchain.models._per_loop import PerLoop
from afnio_langchain.models._protocol import (
    BaseModelClient,
    Completion,
    JsonSchema,
    MalformedReplyError,
    Message,
)
from afnio_langchain.models._retry import RetryPolicy, refuses_json_mode
from afnio_langchain.models._secrets import (
    REDACTED,
    excerpt,
    is_secret_field,
    known_secrets,
    redact_exception,
    redact_value,
    register_header_secrets,
    register_secrets_of,
)
from afnio_langchain.models._unobserved_call import (
    agenerate_unobserved,
    complete_unobserved,
    is_unobserved_in_batch,
    no_cache_applies,
)
from afnio_langchain.models._usage import record_usage, token_count

_MESSAGE_TYPES = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
PURPOSE_METADATA_KEY = "afnio_purpose"
# id(model) -> the JSON mode that model's endpoint took (json_schema, json_object, prompt).
_JSON_MODE_OF: dict[int, str] = {}


def to_langchain_messages(messages: Sequence[Message]) -> list[BaseMessage]:
    """Plain ``{"role", "content"}`` dicts to LangChain message objects."""
    return [_MESSAGE_TYPES[m["role"]](content=m["content"]) for m in messages]


def message_text(message: BaseMessage) -> str:
    """The text of a chat model reply, joining text blocks of multi-part content."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def reply_token_counts(message: BaseMessage) -> tuple[int, int, int]:
    """A chat model reply's ``(input, output, cached input)`` tokens, from LangChain's
    ``usage_metadata`` (the cached ones: ``input_token_details.cache_read``, the prompt
    tokens a provider served from its prompt cache); zeros where it reports none.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.models._langchain_adapter import reply_token_counts
        >>> reply = AIMessage("4", usage_metadata={
        ...     "input_tokens": 40, "output_tokens": 1, "total_tokens": 41,
        ...     "input_token_details": {"cache_read": 32}})
        >>> reply_token_counts(reply), reply_token_counts(AIMessage("4"))
        ((40, 1, 32), (0, 0, 0))
    """
    usage = getattr(message, "usage_metadata", None) or {}
    details = usage.get("input_token_details") or {}
    return (
        token_count(usage.get("input_tokens")),
        token_count(usage.get("output_tokens")),
        token_count(details.get("cache_read")),
    )


def from_llm_cache(message: BaseMessage) -> bool:
    """Whether LangChain's LLM cache answered: it marks a cached reply by zeroing its
    cost (``BaseChatModel._convert_cached_generations``)."""
    usage = getattr(message, "usage_metadata", None) or {}
    return usage.get("total_cost") == 0


def record_reply_usage(model: str, purpose: str, reply: BaseMessage) -> None:
    """Count a LangChain chat model's reply: a call with its tokens (those the provider
    served from its prompt cache included), or a cache hit (no call, no tokens) when
    LangChain's LLM cache answered it.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.models import record_reply_usage, track_usage
        >>> usage = {"input_tokens": 40, "output_tokens": 1, "total_tokens": 41,
        ...          "input_token_details": {"cache_read": 32}}
        >>> with track_usage() as tracker:
        ...     record_reply_usage("m", "forward", AIMessage("4", usage_metadata=usage))
        ...     cached = {**usage, "total_cost": 0}  # what LangChain's LLM cache hands back
        ...     record_reply_usage("m", "forward", AIMessage("4", usage_metadata=cached))
        >>> counts = tracker.by_purpose()["forward"]
        >>> counts.calls, counts.input_tokens, counts.cached_input_tokens, counts.cache_hits
        (1, 40, 32, 1)
    """
    if from_llm_cache(reply):
        record_usage(model, purpose, calls=0, cache_hits=1)
        return
    input_tokens, output_tokens, cached = reply_token_counts(reply)
    record_usage(model, purpose, input_tokens=input_tokens, output_tokens=output_tokens,
                 cached_input_tokens=cached)


class _RedactErrors(AsyncCallbackHandler):
    """Masks secrets in a chat model run before any tracer records it.

    Runs inline and first: the run's invocation parameters and serialised model hold
    per-call and default headers (``extra_headers={"x-api-key": ...}``), and
    providers may echo the API key in an error body, which langchain-openai also
    hands to callbacks as the run's response metadata.
    """

    run_inline = True

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: Any, **kwargs: Any
    ) -> None:
        for shown in (kwargs.get("invocation_params"), serialized.get("kwargs")):
            if isinstance(shown, dict) and _holds_secret_fields(shown):
                shown.update(redact_value(shown, []))

    async def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        redact_exception(error)
        response = kwargs.get("response")
        secrets = known_secrets()
        for generations in getattr(response, "generations", None) or []:
            for generation in generations:
                message = getattr(generation, "message", None)
                metadata = getattr(message, "response_metadata", None)
                if isinstance(metadata, dict):
                    metadata.update(redact_value(metadata, secrets))
                info = getattr(generation, "generation_info", None)
                if isinstance(info, dict):
                    info.update(redact_value(info, secrets))


_REDACT_ERRORS = _RedactErrors()


def _with_redaction(config: RunnableConfig) -> RunnableConfig:
    """``config`` whose callbacks start with the secret-masking handler."""
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.handlers = [_REDACT_ERRORS, *manager.handlers]
        config["callbacks"] = manager
    else:
        config["callbacks"] = [_REDACT_ERRORS, *(callbacks or [])]
    return config


def _holds_secret_fields(value: Any) -> bool:
    """Whether ``value`` holds a str under a secret-named key that is not masked yet
    (the serialised model is the same dict on every call: masked once, it stays so)."""
    if isinstance(value, dict):
        return any(
            (isinstance(v, str) and v and v != REDACTED and is_secret_field(k))
            or _holds_secret_fields(v)
            for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return any(_holds_secret_fields(v) for v in value)
    return False


def _speaks_openai_json_mode(model: BaseChatModel) -> bool:
    return type(model).__module__.startswith(("langchain_openai", "langchain_deepseek"))


def _openai_root(model: BaseChatModel) -> openai.AsyncOpenAI | None:
    """The openai client under a langchain-openai model (None for other models)."""
    root = getattr(model, "root_async_client", None)
    return root if isinstance(root, openai.AsyncOpenAI) else None


def finish_reason_of(reply: BaseMessage) -> str | None:
    """The finish reason a LangChain reply reports (OpenAI's ``finish_reason``,
    Anthropic's ``stop_reason``, Ollama's ``done_reason``), None when it reports none."""
    metadata = getattr(reply, "response_metadata", None) or {}
    for key in ("finish_reason", "stop_reason", "done_reason"):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def is_stream_error_event(exc: BaseException) -> bool:
    """Whether ``exc`` is the error an openai stream raises for an error event in a
    reply that began as HTTP 200 (``data: {"error": {...}}``, or ``event: error``): a
    bare ``openai.APIError``, with no status, no connection failure behind it.

    Example:
        >>> import openai
        >>> from afnio_langchain.models._langchain_adapter import is_stream_error_event
        >>> request = openai.AsyncOpenAI(api_key="sk-test")._build_request(
        ...     openai._models.FinalRequestOptions(method="post", url="/chat/completions"))
        >>> is_stream_error_event(openai.APIError("overloaded", request, body=None))
        True
        >>> is_stream_error_event(openai.APIConnectionError(request=request))
        False
    """
    return type(exc) is openai.APIError


def unanswered_reply(reply: BaseMessage, refusal: Any) -> str | None:
    """Why a LangChain reply holds no answer (a :class:`Completion`'s ``unanswered``):
    ``"refusal"`` (langchain-openai keeps OpenAI's in ``additional_kwargs["refusal"]``),
    ``"tool_calls"`` (tool calls and no text), or None.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> from afnio_langchain.models._langchain_adapter import unanswered_reply
        >>> call = {"name": "search", "args": {"q": "x"}, "id": "call_1"}
        >>> unanswered_reply(AIMessage("", tool_calls=[call]), None)
        'tool_calls'
    """
    if refusal:
        return "refusal"
    if not message_text(reply) and (
        getattr(reply, "tool_calls", None) or getattr(reply, "invalid_tool_calls", None)
    ):
        return "tool_calls"
    return None


class _StreamChecks:
    """Checks each streamed chat-completion reply before langchain-openai reads it (a
    non-streamed reply is checked where it is read: ``_lean_completions``).

    A reply that is not an event stream is answered as an HTTP 502 whose error message
    says what came back (masked), which the openai client raises as a transient server
    error; undecodable bytes end the stream with a :class:`MalformedReplyError`.
    """

    def __init__(self, what: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self._what = what

    async def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = await super().send(request, *args, **kwargs)  # type: ignore[misc]
        if (
            response.status_code != 200
            or not kwargs.get("stream")
            or not request.url.path.endswith(CHAT_COMPLETIONS_PATH)
        ):
            return response
        if "event-stream" not in response.headers.get("content-type", "text/event-stream"):
            text = (await response.aread()).decode("utf-8", "replace")
            message = f"the reply of {self._what} to a streamed request is not an event stream"
            error = {"message": f"{message}: {excerpt(text)!r}", "type": "malformed_reply"}
            return _replaced(response, request, 502, {"error": error})
        stream = _utf8_checked(response.stream, self._what, type(response))
        return type(response)(
            200, headers=response.headers, stream=stream, request=request,
            extensions=response.extensions,
        )


class _CheckedHttpxClient(_StreamChecks, openai.DefaultAsyncHttpxClient):  # type: ignore[misc, valid-type]
    """openai's default httpx client, with the stream checks."""


class _CheckedAioHttpClient(_StreamChecks, openai.DefaultAioHttpClient):  # type: ignore[misc, valid-type]
    """openai's aiohttp-backed client, with the stream checks."""


def _checked_http_client(what: str, base_url: Any, proxy: str | None) -> Any:
    """The HTTP client of a runner: aiohttp where openai's path would take it (see
    :func:`~afnio_langchain.models._openai_adapter.default_http_client`), httpx for a
    proxy, a base URL with userinfo, or without aiohttp."""
    if proxy:
        return _CheckedHttpxClient(what, base_url=base_url, proxy=proxy)
    if aiohttp_usable(base_url):
        return _CheckedAioHttpClient(what, base_url=base_url)
    return _CheckedHttpxClient(what, base_url=base_url)


def _utf8_checked(inner: Any, what: str, response_type: type) -> Any:
    """``inner`` (an async byte stream) raising :class:`MalformedReplyError` at the first
    byte that is not UTF-8, as an instance of the HTTP library's ``AsyncByteStream``."""
    library = sys.modules[response_type.__module__.split(".")[0]]

    class Checked(library.AsyncByteStream):  # type: ignore[misc, name-defined]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            decoder = codecs.getincrementaldecoder("utf-8")()
            async for chunk in inner:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    raise MalformedReplyError(
                        f"the streamed reply of {what} is not UTF-8: {excerpt(chunk)!r}"
                    ) from None
                yield chunk

        async def aclose(self) -> None:
            await inner.aclose()

    return Checked()


def _replaced(response: Any, request: Any, status: int, body: dict[str, Any]) -> Any:
    headers = [
        (k, v)
        for k, v in response.headers.items()
        if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
    ]
    content = json.dumps(body).encode("utf-8")
    return type(response)(status, headers=headers, content=content, request=request)


_RUNNER_CLIENTS: dict[int, PerLoop[LeanChatClient]] = {}
_RUNNER_LOCK = threading.Lock()


def _runner_clients(model: BaseChatModel, root: openai.AsyncOpenAI, what: str) -> PerLoop[Any]:
    """The openai clients a langchain-openai model's calls run on, one per loop."""
    key = id(model)
    clients = _RUNNER_CLIENTS.get(key)
    if clients is not None:
        return clients
    with _RUNNER_LOCK:
        clients = _RUNNER_CLIENTS.get(key)
        if clients is None:
            own_http = getattr(model, "http_async_client", None) is None
            proxy = getattr(model, "openai_proxy", None) or None

            def build() -> LeanChatClient:
                if not own_http:  # the user's HTTP client: used as it is
                    return LeanChatClient(root.with_options(max_retries=0), what)
                http = _checked_http_client(what, root.base_url, proxy)
                copy = root.with_options(http_client=http, max_retries=0)
                # Headers asked for come as openai reads them (httpx's, lower-cased).
                direct = not getattr(model, "include_response_headers", False)
                return LeanChatClient(copy, what, direct=direct)

            clients = _RUNNER_CLIENTS[key] = PerLoop(
                build, (lambda c: c.client.close()) if own_http else None
            )
            weakref.finalize(model, _RUNNER_CLIENTS.pop, key, None)
    return clients


class LangChainChatModelClient(BaseModelClient):
    """Wraps a LangChain chat model; runs nest in LangChain tracing under the caller.

    Each call carries ``metadata={"afnio_purpose": purpose}`` so callbacks and fakes
    can tell forward, backward, optimizer and judge calls apart. Completion arguments
    (``temperature``, ``max_tokens``...) are bound onto the model for the call.

    Args:
        model: The chat model.
        retry: Retry policy for transient failures.
        json_mode: Ask OpenAI-compatible models for a ``response_format`` carrying the
            reply's JSON schema when a JSON reply is needed (``"auto"``: for
            langchain-openai models): ``json_schema`` first, then ``json_object`` with
            the schema (llama.cpp's form), then the prompt alone, as
            :class:`~afnio_langchain.models.OpenAIClient` does; the mode an endpoint
            takes is remembered per model object.
        max_input_chars: Refuse longer requests before sending (see
            :class:`~afnio_langchain.models.BaseModelClient`).

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> from afnio_langchain.models import LangChainChatModelClient
        >>> client = LangChainChatModelClient(FakeListChatModel(responses=["hi"]))
        >>> client.complete([{"role": "user", "content": "hello"}]).text
        'hi'
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        retry: RetryPolicy | None = None,
        json_mode: bool | str = "auto",
        max_input_chars: int | None = None,
    ) -> None:
        super().__init__(retry=retry, max_input_chars=max_input_chars)
        if not isinstance(model, BaseChatModel):
            raise TypeError(f"expected a LangChain BaseChatModel, got {type(model).__name__}")
        register_secrets_of(model)  # masked in every error this client raises
        self.model = model
        self.model_name = str(
            getattr(model, "model_name", None) or getattr(model, "model", None) or model._llm_type
        )
        wanted = _speaks_openai_json_mode(model) if json_mode == "auto" else bool(json_mode)
        self._json_mode = _JSON_MODE_OF.get(id(model), JSON_MODES[0]) if wanted else "prompt"
        self._openai_root = _openai_root(model)

    caches_itself = True  # LangChain's LLM cache (set_llm_cache, the model's cache=)

    def _step_down_json_mode(self, refused: str) -> str:
        """The endpoint refused JSON mode ``refused``: the next one down the ladder,
        remembered per model object (not per adapter) and forgotten when the model dies.
        Never climbs back up (concurrent calls may report refusals out of order)."""
        mode = JSON_MODES[min(JSON_MODES.index(refused) + 1, len(JSON_MODES) - 1)]
        if JSON_MODES.index(mode) > JSON_MODES.index(self._json_mode):
            self._json_mode = mode
        key = id(self.model)
        if key not in _JSON_MODE_OF:
            weakref.finalize(self.model, _JSON_MODE_OF.pop, key, None)
        _JSON_MODE_OF[key] = self._json_mode
        return mode

    def _client_timeout(self) -> float | None:
        return seconds_of(getattr(self.model, "request_timeout", None))

    async def _runner(self, purpose: str) -> BaseChatModel:
        """The model a call runs on: for the langchain-openai family, a copy over this
        loop's checked, non-retrying openai client (see the module doc); for purposes
        other than forward, one that skips LangChain's LLM cache (only forward calls
        are cached: see ``models/_cache.py``)."""
        update: dict[str, Any] = {}
        model = self.model
        if purpose not in CACHED_PURPOSES and not no_cache_applies(model):
            update["cache"] = False
        if self._openai_root is not None:
            client = await _runner_clients(model, self._openai_root, self._what()).get()
            update["root_async_client"] = client
            update["async_client"] = client.chat.completions  # plain requests skip the typed layer
            # LangChain caches the model's serialised form for its callbacks; computed
            # once on the model, the copy shares it instead of serialising on every call.
            getattr(model, "_serialized", None)
        return model.model_copy(update=update) if update else model

    def _call_setup(self, params: dict[str, Any]) -> tuple[dict[str, Any], RunnableConfig]:
        params = dict(params)
        purpose = params.pop("purpose", "forward")
        config: RunnableConfig = ensure_config(params.pop("config", None))
        config["metadata"] = {**config.get("metadata", {}), PURPOSE_METADATA_KEY: purpose}
        if "extra_headers" in params:
            register_header_secrets(params["extra_headers"])  # masked if a server echoes them
        return params, config

    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        purpose = params.get("purpose", "forward")
        params, config = self._call_setup(params)
        mode = self._json_mode if json_schema is not None else "prompt"
        model = await self._runner(purpose)
        while True:
            call_params = {**params, **response_format_for(mode, json_schema)}
            unobserved = self._openai_root is not None and is_unobserved_in_batch(
                self.model, model, config, call_params, purpose
            )
            try:
                return await _invoke(
                    model,
                    messages,
                    call_params,
                    config,
                    self._completion,
                    unobserved=unobserved,
                    model_name=self.model_name,
                )
            except openai.LengthFinishReasonError as exc:  # JSON mode and max_tokens: cut
                return self._cut_completion(exc)
            except Exception as exc:
                if is_stream_error_event(exc):  # a streaming model's reply was an error
                    raise self._stream_error(exc) from exc
                if mode == "prompt" or not refuses_json_mode(exc):
                    raise
                mode = self._step_down_json_mode(mode)  # this endpoint refuses that mode

    def _cut_completion(self, exc: openai.LengthFinishReasonError) -> Completion:
        """The reply langchain-openai refused to parse because max_tokens cut it."""
        completion = getattr(exc, "completion", None)
        choices = getattr(completion, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        usage = getattr(completion, "usage", None)
        return Completion(
            text=str(getattr(message, "content", None) or ""),
            model=self.model_name,
            input_tokens=token_count(getattr(usage, "prompt_tokens", 0)),
            output_tokens=token_count(getattr(usage, "completion_tokens", 0)),
            raw=completion,
            finish_reason="length",
        )

    async def _astream(
        self, messages: Sequence[Message], params: dict[str, Any]
    ) -> AsyncIterator[tuple[str, Completion | None]]:
        purpose = params.get("purpose", "forward")
        params, config = self._call_setup(params)
        model = await self._runner(purpose)
        runnable = model.bind(**params) if params else model
        merged: BaseMessage | None = None
        chunks = runnable.astream(to_langchain_messages(messages), config=_with_redaction(config))
        try:
            async for chunk in chunks:
                merged = chunk if merged is None else merged + chunk  # type: ignore[operator]
                yield message_text(chunk), None
        except openai.APIError as exc:
            if not is_stream_error_event(exc):
                raise
            shown = len(message_text(merged)) if merged is not None else 0
            raise self._stream_error(exc, shown) from exc
        yield "", self._completion(merged if merged is not None else AIMessage(content=""))

    def _stream_error(self, exc: BaseException, shown: int = 0) -> MalformedReplyError:
        """An error event in a streamed reply, as a transient :class:`MalformedReplyError`
        (retried before any text was shown; after, it surfaces: the text so far is
        not the whole reply)."""
        after = f" after {shown} characters" if shown else ""
        return MalformedReplyError(
            f"the streamed reply of {self._what()} is an error event{after}: "
            f"{excerpt(str(exc))!r}"
        )

    def _completion(self, reply: BaseMessage) -> Completion:
        """The reply as a :class:`Completion`; a langchain-openai reply without a
        finish reason is a stream that ended early (transient)."""
        metadata = getattr(reply, "response_metadata", None) or {}
        text = message_text(reply)
        from_cache = from_llm_cache(reply)
        if self._openai_root is not None and "finish_reason" not in metadata and not from_cache:
            raise MalformedReplyError(
                f"the reply of {self._what()} ended before its finish (the stream stopped "
                f"after {len(text)} characters)"
            )
        input_tokens, output_tokens, cached_input_tokens = reply_token_counts(reply)
        refusal = reply.additional_kwargs.get("refusal")
        return Completion(
            text=text,
            model=str(metadata.get("model_name") or self.model_name),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            raw=reply,
            cached_input_tokens=cached_input_tokens,
            from_cache=from_cache,
            finish_reason=finish_reason_of(reply),
            unanswered=unanswered_reply(reply, refusal) if refusal or not text else None,
        )


async def _invoke(
    model: BaseChatModel,
    messages: Sequence[Message],
    params: dict[str, Any],
    config: RunnableConfig,
    to_completion: Callable[[BaseMessage], Completion],
    *,
    unobserved: bool = False,
    model_name: str = "",
) -> Completion:
    """The model's reply, read by ``to_completion``; ``unobserved`` (a langchain-openai
    model whose run no handler, cache or limiter would see): straight from its
    ``_agenerate``, and for plain text from the reply body itself."""
    if unobserved:
        completion = await complete_unobserved(model, messages, params, to_completion, model_name)
        if completion is not None:
            return completion
        return to_completion(
            await agenerate_unobserved(model, to_langchain_messages(messages), params)
        )
    # Call options as keywords: what model.bind(**params).ainvoke does, without a
    # binding built per call (a binding adds no run of its own to traces).
    lc_messages = to_langchain_messages(messages)
    return to_completion(await model.ainvoke(lc_messages, config=_with_redaction(config), **params))
