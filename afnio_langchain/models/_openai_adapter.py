"""Adapter: an ``openai.OpenAI`` / ``openai.AsyncOpenAI`` client as a :class:`ModelClient`."""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai

from afnio_langchain.models._protocol import BaseModelClient, Completion, JsonSchema, Message
from afnio_langchain.models._retry import RetryPolicy, refuses_json_mode
from afnio_langchain.models._secrets import register_secrets_of

JSON_MODES = ("json_schema", "json_object", "prompt")
CHAT_COMPLETIONS_PATH = "/chat/completions"
# ``chat.completions.create`` keywords that are request options rather than body fields.
_REQUEST_OPTIONS = {
    "extra_headers": "headers",
    "extra_query": "params",
    "extra_body": "extra_json",
    "timeout": "timeout",
}


class MalformedReplyError(RuntimeError):
    """The server answered, but not with a usable chat completion. Retried as transient."""

    transient = True


class OpenAIClient(BaseModelClient):
    """Wraps an ``openai`` client (sync or async) and a model name.

    Retries are done by the package's :class:`RetryPolicy` (the client's own retries
    are switched off on the copy used here, so failures are not retried twice).
    JSON replies use ``response_format`` of type ``json_schema``; a server that refuses
    it (llama.cpp's answers HTTP 500) is asked with ``json_object`` plus ``schema``,
    and failing that, by prompt alone. The mode that worked is remembered.

    Args:
        client: ``openai.OpenAI`` or ``openai.AsyncOpenAI``.
        model: The model name sent with each request.
        retry: Retry policy for transient failures.
        json_mode: First JSON mode to try: ``json_schema``, ``json_object`` or ``prompt``.
        max_input_chars: Refuse longer requests before sending (see
            :class:`~afnio_langchain.models.BaseModelClient`).
        **default_params: Sent with every request (``temperature=0``...).

    Example:
        >>> import openai
        >>> from afnio_langchain.models import OpenAIClient
        >>> client = OpenAIClient(openai.AsyncOpenAI(api_key="sk-test"), model="gpt-4o-mini")
        >>> client.model_name
        'gpt-4o-mini'
    """

    def __init__(
        self,
        client: openai.OpenAI | openai.AsyncOpenAI,
        model: str,
        *,
        retry: RetryPolicy | None = None,
        json_mode: str = "json_schema",
        max_input_chars: int | None = None,
        **default_params: Any,
    ) -> None:
        super().__init__(retry=retry, max_input_chars=max_input_chars)
        if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
            raise TypeError(f"expected openai.OpenAI or AsyncOpenAI, got {type(client).__name__}")
        register_secrets_of(client)  # masked in every error this client raises
        if not isinstance(model, str) or not model:
            raise TypeError("an openai client needs a model name: pass model='gpt-4o-mini'")
        if json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {JSON_MODES}, got {json_mode!r}")
        self._client = client.with_options(max_retries=0)
        self._is_async = isinstance(client, openai.AsyncOpenAI)
        # httpx connection pools belong to the event loop that opened them, and each sync
        # call runs on a fresh loop: an async client with openai's default HTTP client gets
        # one copy (with its own pool) per loop. A user-supplied http_client is used as is.
        self._per_loop = self._is_async and (
            type(getattr(client, "_client", None)).__name__ == "AsyncHttpxClientWrapper"
        )
        self._loop_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._loop_lock = threading.Lock()
        self.model_name = model
        self.json_mode = json_mode
        self.default_params = default_params

    def __repr__(self) -> str:
        return f"OpenAIClient(model_name={self.model_name!r}, base_url={str(self._client.base_url)!r})"

    def cache_identity(self) -> str:
        return f"openai:{self._client.base_url}:{self.model_name}"

    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        params = {**self.default_params, **params}
        params.pop("purpose", None)
        params.pop("config", None)
        mode = self.json_mode if json_schema is not None else "prompt"
        while True:
            try:
                response = await self._create(
                    messages, {**params, **_response_format(mode, json_schema)}
                )
                break
            except openai.APIStatusError as exc:
                if mode == "prompt" or not refuses_json_mode(exc):
                    raise
                mode = JSON_MODES[JSON_MODES.index(mode) + 1]
        if json_schema is not None and JSON_MODES.index(mode) > JSON_MODES.index(self.json_mode):
            # Remember only a mode that worked (a bad request failing in every mode must
            # not downgrade the endpoint), and never climb back up (concurrent calls).
            self.json_mode = mode
        return _completion_from(response, self.model_name)

    async def _client_for_running_loop(self) -> Any:
        if not self._per_loop:
            return self._client
        loop = asyncio.get_running_loop()
        with self._loop_lock:
            entry = self._loop_clients.get(loop)
            fresh = entry is None
            if entry is None:
                http_client = _default_http_client(self._client.base_url)
                client = self._client.copy(http_client=http_client)
                entry = self._loop_clients[loop] = (client, _close_with_loop(client))
        if fresh:
            await entry[1].__anext__()  # closes the pool when the loop shuts down
        return entry[0]

    async def _create(self, messages: Sequence[Message], params: dict[str, Any]) -> Any:
        """POST one chat completion and return the reply body as a dict.

        Uses the client's documented raw-request API (``client.post``) rather than
        ``chat.completions.create``: our parameters are plain JSON, so create's typed
        transform of the request and its pydantic reply models only cost CPU (about a
        third of the client's time per call, measured in ``benchmarks/``). Same
        transport, headers, timeouts and errors.
        """
        client = await self._client_for_running_loop()
        body = {"model": self.model_name, "messages": list(messages)}
        options: dict[str, Any] = {}
        for key, value in params.items():
            if key in _REQUEST_OPTIONS:
                options[_REQUEST_OPTIONS[key]] = value
            else:
                body[key] = value
        if self._is_async:
            response = await client.post(
                CHAT_COMPLETIONS_PATH, body=body, options=options, cast_to=str
            )
        else:
            response = await asyncio.to_thread(
                client.post,
                CHAT_COMPLETIONS_PATH,
                body=body,
                options=options,
                cast_to=str,
            )
        try:
            return json.loads(response)
        except json.JSONDecodeError as exc:  # a 200 whose body is not JSON
            raise MalformedReplyError(f"reply body is not JSON: {response[:300]!r}") from exc


def _default_http_client(base_url: Any) -> Any:
    """The HTTP client for one event loop of a client built with openai's default one:
    openai's own aiohttp backend (``openai.DefaultAioHttpClient``, "for improved
    concurrency performance") when aiohttp is installed, else its httpx default.
    Same defaults (timeout, connection limits, redirects); aiohttp spends a fraction of
    httpx's CPU per request, which sits on the critical path of a minibatch's calls
    (``benchmarks/``)."""
    try:
        import aiohttp  # noqa: F401

        return openai.DefaultAioHttpClient(base_url=base_url)
    except (ImportError, RuntimeError):
        return openai.DefaultAsyncHttpxClient(base_url=base_url)


async def _close_with_loop(client: Any) -> AsyncIterator[None]:
    """Close ``client`` when its loop shuts down its async generators (``asyncio.run`` does)."""
    try:
        yield
    finally:
        await client.close()


def _response_format(mode: str, json_schema: JsonSchema | None) -> dict[str, Any]:
    if json_schema is None or mode == "prompt":
        return {}
    if mode == "json_schema":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": json_schema.name, "schema": json_schema.schema},
            }
        }
    return {"response_format": {"type": "json_object", "schema": json_schema.schema}}


def _field(value: Any, key: str) -> Any:
    """``value[key]`` of a JSON object (None for anything else or a missing key)."""
    return value.get(key) if isinstance(value, dict) else None


def _completion_from(response: Any, default_model: str) -> Completion:
    """A :class:`Completion` from a chat-completion reply body (a dict)."""
    choices = _field(response, "choices")
    if not choices or not isinstance(choices, list):
        raise MalformedReplyError(f"chat completion without choices: {str(response)[:300]!r}")
    message = _field(choices[0], "message")
    content = _field(message, "content")
    if content is None:
        if not isinstance(message, dict):
            raise MalformedReplyError(f"choice without a message: {str(choices[0])[:300]!r}")
        content = ""
    if not isinstance(content, str):
        raise MalformedReplyError(f"message content is not text: {content!r:.300}")
    usage = _field(response, "usage")
    return Completion(
        text=content,
        model=str(_field(response, "model") or default_model),
        input_tokens=int(_field(usage, "prompt_tokens") or 0),
        output_tokens=int(_field(usage, "completion_tokens") or 0),
        raw=response,
        cached_input_tokens=int(_field(_field(usage, "prompt_tokens_details"), "cached_tokens") or 0),
    )
