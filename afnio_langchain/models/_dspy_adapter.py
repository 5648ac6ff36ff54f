"""Adapter: a ``dspy.LM`` (any ``dspy.BaseLM``) as a :class:`ModelClient`.

DSPy 3.4 deprecates custom ``forward()`` LMs and OpenAI-style ``messages=``
dictionaries (removal in 3.5). This adapter speaks only the current typed API:
it builds a ``dspy.lm15.Request`` and calls ``lm.acall(request)`` (or ``lm(request)``
in a worker thread when the LM has no async engine), which returns a
``dspy.lm15.Response``. DSPy keeps what it owns for such calls: its response cache,
history, callbacks and usage tracking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

try:
    import dspy
    from dspy.lm15 import DataPart, Request, Response, TextPart, request_from_openai_chat
    from dspy.utils.exceptions import (
        ContextWindowExceededError,
        LMInvalidRequestError,
        LMUnsupportedFeatureError,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides dspy
    raise ImportError(
        "Using a dspy.LM as a model needs DSPy: pip install 'afnio-langchain[dspy]'"
    ) from exc

from afnio_langchain.models._chat_body import unanswered
from afnio_langchain.models._openai_adapter import seconds_of
from afnio_langchain.models._protocol import (
    BaseModelClient,
    Completion,
    JsonSchema,
    MalformedReplyError,
    Message,
)
from afnio_langchain.models._retry import RetryPolicy, refuses_json_mode, status_code_of
from afnio_langchain.models._secrets import register_secrets_of
from afnio_langchain.models._usage import token_count

_DEFAULT_RETRY = RetryPolicy()

INSTALL_HINT = "pip install 'afnio-langchain[dspy]'"

# Purposes whose replies must never come from DSPy's response cache: a critique or a
# proposal replayed from cache would silently stop the optimisation from moving.
UNCACHED_PURPOSES = frozenset({"backward", "optimizer", "judge"})

# Keys of ``lm.kwargs`` that are not generation settings of a Request: client settings
# (DSPy routes them itself, from ``lm.kwargs``) and DSPy's execution controls. Mirrors
# what DSPy strips when it canonicalises an ordinary call (dspy/clients/execution.py,
# ``_canonical``).
try:
    from dspy.clients.backend_selection import CLIENT_KEYS as _CLIENT_KEYS
except ImportError:  # pragma: no cover - private module moved
    _CLIENT_KEYS = {
        "api_key",
        "api_base",
        "base_url",
        "headers",
        "extra_headers",
        "timeout",
        "api_version",
        "azure_ad_token_provider",
        "organization",
        "project",
        "extra_query",
        "custom_llm_provider",
    }
_NOT_GENERATION_KEYS = frozenset(_CLIENT_KEYS) | {
    "n",
    "num_generations",
    "rollout_id",
    "prompt_cache",
}


class DSPyLMClient(BaseModelClient):
    """Wraps a ``dspy.LM`` (any ``dspy.BaseLM``) through DSPy's typed request API.

    Each call builds a ``dspy.lm15.Request`` (system prompt, ``Message`` objects and a
    ``Config``) and awaits ``lm.acall(request)``; nothing deprecated is used, so DSPy
    emits no ``DeprecationWarning`` (a legacy ``forward()`` LM still warns: that is
    the LM's own deprecation).

    - **Messages**: a leading system message becomes ``Request.system``; a later one a
      ``developer`` message (lm15's rule for Chat Completions input). Only system
      messages: they are sent as one user message (a Request needs one).
    - **Params**: completion arguments (``temperature``, ``max_tokens``, ``stop``,
      ``seed``...) and the LM's own defaults (``dspy.LM(..., temperature=0)``) are read
      into ``Request.config`` by ``dspy.lm15.request_from_openai_chat``, exactly as
      DSPy reads the keyword arguments of an ordinary ``lm(...)`` call; an argument no
      Request can carry is refused, never dropped. ``cache`` and ``rollout_id`` are
      DSPy call controls and are passed as such.
    - **Cache**: forward calls follow the LM's ``cache`` setting. Backward, optimizer
      and judge calls pass ``cache=False`` (neither read nor written), so a critique is
      never replayed from DSPy's cache. A cache hit costs nothing and is counted with
      zero tokens.
    - **Retries**: DSPy retries transient errors itself (``lm.num_retries``, 3 by
      default) and has no per-call switch for a Request call. Our
      :class:`RetryPolicy` does the retrying, so each call runs on
      ``lm.copy(num_retries=0)``, a shallow copy made at call time that shares the
      LM's engines, connection pools and cache; the call's history entry is copied
      back to ``lm.history``. Without a ``retry`` of its own, the policy takes the
      LM's ``num_retries`` as it is at call time: ``num_retries + 1`` requests per
      call (a server's ``retry-after`` honoured), as DSPy would make.
    - **JSON**: when a schema is asked for and the LM says it supports response
      schemas (``lm.supports_response_schema``), it is sent as
      ``Config.response_format``; a model that refuses it is asked again by prompt
      alone, and the adapter remembers that.

    Args:
        lm: The DSPy language model.
        retry: Retry policy for transient failures.
        json_mode: Send JSON schemas as ``response_format``: ``"auto"`` (when the LM
            reports support), ``True`` or ``False``.
        max_input_chars: Refuse longer requests before sending (see
            :class:`~afnio_langchain.models.BaseModelClient`).

    Raises:
        TypeError: ``lm`` is not a ``dspy.BaseLM``.

    Example:
        >>> import dspy
        >>> from dspy.lm15 import Message, Response, TextPart, Usage
        >>> from afnio_langchain.models import as_model_client
        >>> class Echo:  # a DSPy engine: complete(Request) -> Response
        ...     def complete(self, request):
        ...         return Response(id=None, model="echo", finish_reason="stop",
        ...                         message=Message.assistant(TextPart(request.messages[-1].text)),
        ...                         usage=Usage(input_tokens=2, output_tokens=2))
        >>> class AsyncEcho:
        ...     async def complete(self, request):
        ...         return Echo().complete(request)
        >>> lm = dspy.LM("local/echo", engine=Echo(), async_engine=AsyncEcho(), cache=False)
        >>> client = as_model_client(lm)
        >>> client.complete([{"role": "user", "content": "hello"}]).text
        'hello'
    """

    def __init__(
        self,
        lm: dspy.BaseLM,
        *,
        retry: RetryPolicy | None = None,
        json_mode: bool | str = "auto",
        max_input_chars: int | None = None,
    ) -> None:
        super().__init__(retry=retry, max_input_chars=max_input_chars)
        if not isinstance(lm, dspy.BaseLM):
            raise TypeError(f"expected a dspy.LM (dspy.BaseLM), got {type(lm).__name__}")
        register_secrets_of(lm)  # masked in every error this client raises
        if json_mode not in ("auto", True, False):
            raise ValueError(f"json_mode must be 'auto', True or False, got {json_mode!r}")
        self.lm = lm
        self.model_name = str(lm.model)
        self._json_mode: bool | None = None if json_mode == "auto" else bool(json_mode)
        self._retry = retry  # None: the LM's own num_retries, read at each call

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy: the one given, else ``lm.num_retries + 1`` attempts."""
        if self._retry is not None:
            return self._retry
        retries = getattr(self.lm, "num_retries", None)
        if not hasattr(self.lm, "_engine_spec") or not isinstance(retries, int) or retries < 0:
            return _DEFAULT_RETRY  # an LM DSPy does not retry itself
        if retries + 1 != _DEFAULT_RETRY.max_attempts:
            return dataclasses.replace(_DEFAULT_RETRY, max_attempts=retries + 1)
        return _DEFAULT_RETRY

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._retry = policy

    caches_itself = True  # DSPy's response cache (the LM's cache setting)

    def __repr__(self) -> str:
        return f"DSPyLMClient(model_name={self.model_name!r}, lm={type(self.lm).__name__})"

    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        params = dict(params)
        purpose = params.pop("purpose", "forward")
        params.pop("config", None)  # LangChain run config: no meaning for DSPy
        controls: dict[str, Any] = {}
        cache = params.pop("cache", None)
        if purpose in UNCACHED_PURPOSES:
            cache = False
        if cache is not None:
            controls["cache"] = bool(cache)
        rollout_id = params.pop("rollout_id", self.lm.kwargs.get("rollout_id"))
        if rollout_id is not None:
            controls["rollout_id"] = rollout_id

        schema = None
        if json_schema is not None and "response_format" not in params:
            schema = json_schema if await self._supports_response_schema() else None
        try:
            response, usage, called = await self._call(
                self._request(messages, params, schema), controls
            )
        except Exception as exc:
            if schema is None or not _refuses_response_format(exc):
                raise
            self._json_mode = False  # this model refuses the schema: prompt and parse instead
            schema = None
            response, usage, called = await self._call(
                self._request(messages, params, None), controls
            )
        if has_no_choices(response):
            if not called:
                # DSPy's response cache stores such a reply and would replay it to every
                # retry: ask the server itself once.
                request = self._request(messages, params, schema)
                response, usage, called = await self._call(request, {**controls, "cache": False})
            if has_no_choices(response):
                raise MalformedReplyError(
                    f"the reply of {self._what()} is a chat completion without choices "
                    "(DSPy reads it as an empty answer)"
                )
        details = usage.get("prompt_tokens_details")
        reason = provider_finish_reason(response) or getattr(response, "finish_reason", None)
        text = response_text(response)
        return Completion(
            text=text,
            model=self.model_name,
            input_tokens=token_count(usage.get("prompt_tokens")),
            output_tokens=token_count(usage.get("completion_tokens")),
            raw=response,
            cached_input_tokens=token_count(details.get("cached_tokens"))
            if isinstance(details, dict)
            else 0,
            from_cache=not called,
            finish_reason=reason if isinstance(reason, str) and reason else None,
            unanswered=provider_unanswered(response, text),
        )

    def _request(
        self, messages: Sequence[Message], params: dict[str, Any], schema: JsonSchema | None
    ) -> Request:
        defaults = {
            key: value
            for key, value in self.lm.kwargs.items()
            if value is not None and key not in _NOT_GENERATION_KEYS
        }
        return to_request(
            self.lm.model,
            messages,
            {**defaults, **params},
            schema,
            prompt_cache=self.lm.kwargs.get("prompt_cache"),
        )

    async def _call(
        self, request: Request, controls: dict[str, Any]
    ) -> tuple[Response, dict, bool]:
        """The LM's response, the tokens DSPy counted for it, and whether the call
        reached the model (DSPy reports usage for every call its cache did not answer,
        empty when the provider sent none)."""
        lm = self._runner()
        # DSPy adds a call's usage to the active tracker only when it did not come
        # from its cache (dspy/clients/execution.py, finalize); a scope of our own
        # tells us the tokens this call actually spent. It rolls up into any
        # dspy.track_usage() scope the user has open.
        try:
            with dspy.track_usage() as tracker:
                reported = _noting_reports(tracker)
                if _has_async_path(lm):
                    response = await lm.acall(request, **controls)
                else:
                    response = await asyncio.to_thread(lm, request, **controls)
        finally:
            if lm is not self.lm:
                _copy_history(lm, self.lm)
        if not isinstance(response, Response):
            raise TypeError(
                f"{type(self.lm).__name__}.acall(Request) returned {type(response).__name__}, "
                "expected dspy.lm15.Response"
            )
        return response, tracker.get_total_tokens().get(lm.model, {}), bool(reported)

    def _runner(self) -> dspy.BaseLM:
        """The LM to call: a copy without DSPy's own retries when DSPy would retry."""
        lm = self.lm
        # Only managed LMs (an engine; dspy.LM, DummyLM) are retried by DSPy
        # (execution.py: ``retries = lm.num_retries if call.managed else 0``).
        if hasattr(lm, "_engine_spec") and getattr(lm, "num_retries", 0):
            return lm.copy(num_retries=0)
        return lm

    def _client_timeout(self) -> float | None:
        """The LM's own ``timeout`` (``dspy.LM(..., timeout=30)``), in seconds."""
        return seconds_of(self.lm.kwargs.get("timeout"))

    async def _supports_response_schema(self) -> bool:
        if self._json_mode is None:
            # May consult DSPy's model metadata (or LiteLLM's): off the event loop.
            self._json_mode = await asyncio.to_thread(_reports_response_schema, self.lm)
        return self._json_mode


def to_request(
    model: str,
    messages: Sequence[Message],
    params: dict[str, Any],
    json_schema: JsonSchema | None = None,
    *,
    prompt_cache: Any = None,
) -> Request:
    """Plain messages and completion arguments as a ``dspy.lm15.Request``."""
    rows = [{"role": m["role"], "content": m["content"]} for m in messages]
    if rows and all(row["role"] == "system" for row in rows):
        rows = [{"role": "user", "content": "\n\n".join(row["content"] for row in rows)}]
    request = request_from_openai_chat({**params, "model": model, "messages": rows})
    config = request.config
    if json_schema is not None:
        config = dataclasses.replace(
            config,
            response_format={
                "type": "json_schema",
                "name": json_schema.name or "response",
                "schema": json_schema.schema,
            },
        )
    if prompt_cache is not None and config.cache is None:
        config = dataclasses.replace(config, cache=prompt_cache)
    return request if config is request.config else dataclasses.replace(request, config=config)


def _noting_reports(tracker: Any) -> list[bool]:
    """A list that gets an item each time DSPy reports a call's usage to ``tracker``:
    DSPy does so for every call its cache did not answer (``execution.finalize``), even
    when the provider sent no usage, which the tracker itself does not keep."""
    reported: list[bool] = []
    add_usage = tracker.add_usage

    def noting(lm: str, usage_entry: dict[str, Any]) -> None:
        reported.append(True)
        add_usage(lm, usage_entry)

    tracker.add_usage = noting
    return reported


def _provider_choices(response: Response) -> list[Any] | None:
    """The ``choices`` of the provider's body behind ``response`` (a dict, or an object
    with the attribute), None when the body does not say."""
    body = response.provider_data
    choices = body.get("choices") if isinstance(body, dict) else getattr(body, "choices", None)
    return choices if isinstance(choices, list) else None


def provider_finish_reason(response: Response) -> str | None:
    """The finish reason the provider sent (``choices[0].finish_reason`` of the body
    behind ``response``), when it is there. DSPy maps a reason it does not know
    (``"error"`` from a gateway) to ``"stop"``, which would pass for a complete reply."""
    choices = _provider_choices(response)
    if choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) and reason else None
    return None


def provider_unanswered(response: Response, text: str) -> str | None:
    """Why the provider's reply behind ``response`` holds no answer (a
    :class:`~afnio_langchain.models.Completion`'s ``unanswered``: ``"refusal"``, or
    ``"tool_calls"`` and no text), read from its body's first message; None when it
    is an answer, or the body does not say."""
    choices = _provider_choices(response)
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return None
    refusal = message.get("refusal")
    return unanswered(message, refusal) if refusal or not text else None


def has_no_choices(response: Response) -> bool:
    """Whether the provider's body behind ``response`` held no choice at all. DSPy maps
    ``"choices": []`` to an empty assistant message with ``finish_reason="stop"``,
    which would otherwise read as a model that answered nothing."""
    return _provider_choices(response) == []


def response_text(response: Response) -> str:
    """The visible text of a reply (JSON data parts rendered as JSON text)."""
    text = response.text
    if text is not None:
        return text
    pieces = []
    for part in response.message.parts:
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif isinstance(part, DataPart):
            pieces.append(json.dumps(part.value, ensure_ascii=False))
    return "".join(pieces)


def _has_async_path(lm: dspy.BaseLM) -> bool:
    """Whether ``lm.acall`` can run this LM without blocking the loop or failing."""
    spec = getattr(lm, "_engine_spec", None)
    if spec is None:  # a legacy forward() plugin: async only if it has its own aforward
        return type(lm).aforward is not dspy.BaseLM.aforward
    if isinstance(spec, str):  # "auto", "lm15", "litellm": DSPy owns both engines
        return True
    return getattr(lm, "_async_engine_spec", None) is not None  # custom engine pair


def _copy_history(source: dspy.BaseLM, target: dspy.BaseLM) -> None:
    """Append the entries a per-call copy recorded to the user's LM's history."""
    from dspy.dsp.utils import settings

    limit = settings.max_history_size
    if settings.disable_history or limit == 0:
        return
    for entry in source.history:
        if len(target.history) >= limit:
            target.history.pop(0)
        target.history.append(entry)


def _reports_response_schema(lm: dspy.BaseLM) -> bool:
    try:
        return bool(lm.supports_response_schema)
    except Exception:  # unknown provider or metadata: unknown counts as unsupported
        return False


def _refuses_response_format(exc: BaseException) -> bool:
    """True when a failure looks like the model refusing structured output."""
    if isinstance(exc, ContextWindowExceededError):
        return False
    if isinstance(exc, (LMUnsupportedFeatureError, LMInvalidRequestError)):
        return True
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        status = status_code_of(exc)
    return refuses_json_mode(exc, status)


__all__ = ["DSPyLMClient", "INSTALL_HINT", "response_text", "to_request"]
