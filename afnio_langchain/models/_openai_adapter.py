"""Adapter: an ``openai.OpenAI`` / ``openai.AsyncOpenAI`` client as a :class:`ModelClient`."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from typing import Any

import openai

from afnio_langchain.models._chat_body import completion_from, parse_chat_body
from afnio_langchain.models._direct_post import DirectPost
from afnio_langchain.models._per_loop import PerLoop
from afnio_langchain.models._protocol import BaseModelClient, Completion, JsonSchema, Message
from afnio_langchain.models._retry import RetryPolicy, refuses_json_mode
from afnio_langchain.models._secrets import mask_url, register_header_secrets, register_secrets_of

JSON_MODES = ("json_schema", "json_object", "prompt")
CHAT_COMPLETIONS_PATH = "/chat/completions"
# ``chat.completions.create`` keywords that are request options rather than body fields.
_REQUEST_OPTIONS = {
    "extra_headers": "headers",
    "extra_query": "params",
    "extra_body": "extra_json",
    "timeout": "timeout",
}


class OpenAIClient(BaseModelClient):
    """Wraps an ``openai`` client (sync or async) and a model name.

    Retries are done by the package's :class:`RetryPolicy` (the client's own retries
    are switched off on the copy used here, so ``max_attempts`` counts requests), and
    each attempt must end within the client's ``timeout``, reply body included.
    Reply bodies are read as bytes and checked: one that is not UTF-8, not JSON or
    has no ``choices`` is a transient :class:`MalformedReplyError`.
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
        # An async client with openai's default HTTP client gets one copy (with its own
        # connection pool) per event loop; a user-supplied http_client is used as is.
        self._per_loop: PerLoop[DirectPost] | None = None
        if self._is_async and (
            type(getattr(client, "_client", None)).__name__ == "AsyncHttpxClientWrapper"
        ):
            base = self._client
            self._per_loop = PerLoop(
                lambda: DirectPost(base.copy(http_client=default_http_client(base.base_url))),
                lambda post: post.client.close(),
            )
        self.model_name = model
        self.json_mode = json_mode
        self.default_params = default_params

    def __repr__(self) -> str:
        url = mask_url(str(self._client.base_url))
        return f"OpenAIClient(model_name={self.model_name!r}, base_url={url!r})"

    def _client_timeout(self) -> float | None:
        return seconds_of(self._client.timeout)

    def cache_identity(self) -> str:
        return f"openai:{self._client.base_url}:{self.model_name}"

    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        params = {**self.default_params, **params}
        params.pop("purpose", None)
        params.pop("config", None)
        _check_response_format(params.get("response_format"))
        mode = self.json_mode if json_schema is not None else "prompt"
        while True:
            try:
                response = await self._create(
                    messages, {**params, **response_format_for(mode, json_schema)}
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
        return completion_from(response, self.model_name)

    async def _create(self, messages: Sequence[Message], params: dict[str, Any]) -> Any:
        """POST one chat completion and return the reply body as a checked dict.

        Uses the client's documented raw-request API (``client.post``) rather than
        ``chat.completions.create``: our parameters are plain JSON, so create's typed
        transform of the request and its pydantic reply models only cost CPU (about a
        third of the client's time per call, measured in ``benchmarks/``). Same
        transport, headers, timeouts and errors; on the package's own per-loop copies,
        the request built once and reused (:class:`DirectPost`). The body comes back as
        bytes, so that undecodable bytes are refused rather than read as U+FFFD.
        """
        body, options = split_request_options(
            {"model": self.model_name, "messages": list(messages), **params}
        )
        client = self._client
        if self._per_loop is not None:
            raw = await (await self._per_loop.get())(CHAT_COMPLETIONS_PATH, body, options)
        elif self._is_async:
            raw = await client.post(CHAT_COMPLETIONS_PATH, body=body, options=options, cast_to=bytes)
        else:
            raw = await asyncio.to_thread(
                client.post, CHAT_COMPLETIONS_PATH, body=body, options=options, cast_to=bytes
            )
        return parse_chat_body(raw, self._what())


def split_request_options(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``chat.completions.create`` keywords as the JSON body and the request options
    of ``client.post`` (``extra_headers``, ``extra_query``, ``extra_body``, ``timeout``).

    Example:
        >>> split_request_options({"model": "m", "extra_headers": {"x-a": "1"}})
        ({'model': 'm'}, {'headers': {'x-a': '1'}})
    """
    body: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in params.items():
        if key in _REQUEST_OPTIONS:
            options[_REQUEST_OPTIONS[key]] = value
        else:
            body[key] = value
    if "headers" in options:
        register_header_secrets(options["headers"])  # masked if a server echoes them
    return body, options


def default_http_client(base_url: Any) -> Any:
    """The HTTP client for one event loop of a client built with openai's default one:
    openai's own aiohttp backend (``openai.DefaultAioHttpClient``, "for improved
    concurrency performance") when :func:`aiohttp_usable`, else its httpx default.
    Same defaults (timeout, connection limits, redirects); aiohttp spends a fraction of
    httpx's CPU per request, which sits on the critical path of a minibatch's calls
    (``benchmarks/``)."""
    if aiohttp_usable(base_url):
        return openai.DefaultAioHttpClient(base_url=base_url)
    return openai.DefaultAsyncHttpxClient(base_url=base_url)


def aiohttp_usable(base_url: Any) -> bool:
    """Whether openai's aiohttp backend can serve ``base_url``: aiohttp is installed,
    and the URL has no userinfo (aiohttp refuses credentials in the URL beside the
    client's ``Authorization`` header)."""
    if urllib.parse.urlsplit(str(base_url)).username is not None:
        return False
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return not openai.DefaultAioHttpClient.__name__.startswith("_Missing")


def seconds_of(timeout: Any) -> float | None:
    """A client timeout (a number, an ``httpx.Timeout``, openai's NOT_GIVEN, None) in
    seconds: the longest of its phases, None when there is none."""
    if timeout is None:
        return None
    global _last_timeout
    last = _last_timeout
    if timeout is last[0]:  # a client's one timeout object, asked on every call
        return last[1]
    seconds = _seconds_of(timeout)
    if not isinstance(timeout, (int, float, list)):
        _last_timeout = (timeout, seconds)
    return seconds


_last_timeout: tuple[Any, float | None] = (object(), None)


def _seconds_of(timeout: Any) -> float | None:
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return float(timeout) if timeout > 0 else None
    if isinstance(timeout, (tuple, list)):
        phases = list(timeout)
    else:
        phases = [getattr(timeout, k, None) for k in ("connect", "read", "write", "pool")]
    known = [
        float(v) for v in phases if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    ]
    return max(known) if known else None


def _check_response_format(response_format: Any) -> None:
    """Refuse a class as ``response_format``, openai's ``parse()`` form, before anything
    is sent: this client sends plain JSON requests."""
    if isinstance(response_format, type):
        name = response_format.__name__
        schema = f"{name}.model_json_schema()" if hasattr(response_format, "model_json_schema") else "<its JSON schema>"
        raise TypeError(
            f"response_format={name} is a class, which the openai client takes only in "
            "chat.completions.parse(); pass its JSON schema instead, response_format="
            f"{{'type': 'json_schema', 'json_schema': {{'name': '{name}', 'schema': "
            f"{schema}}}}}, or use ChatOpenAI, whose pydantic response_format keeps "
            "openai's parse()"
        )


def response_format_for(mode: str, json_schema: JsonSchema | None) -> dict[str, Any]:
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
