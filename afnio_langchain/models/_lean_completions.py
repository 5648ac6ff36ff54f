"""langchain-openai's non-streamed chat-completion requests over the openai client's
raw request API.

``ChatOpenAI`` sends each request through ``chat.completions.create`` (or ``.parse``
when a ``response_format`` is set). Its typed transform of the request body walks
the request's TypedDict annotations recursively, and its reply becomes pydantic
models that langchain-openai dumps straight back to a dict: together about half of
the CPU ``ChatOpenAI`` spends per call (``benchmarks/``), and on one core that CPU
sits on the critical path of a minibatch's calls. The runner copy of a
langchain-openai model (see ``_langchain_adapter``) gets the objects below in place
of its ``async_client`` and ``root_async_client``: plain-JSON requests are posted with
``client.post`` (same transport, headers, timeouts and errors; over the package's own
HTTP client, with :class:`~afnio_langchain.models._direct_post.DirectPost`, which
builds that request once and reuses it) and the reply body is
checked (:func:`~afnio_langchain.models._chat_body.parse_chat_body`) and handed to
langchain-openai as the dict it builds its ``ChatResult`` from. Everything else
(streams, a pydantic ``response_format``, other endpoints) goes to the real client.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from afnio_langchain.models._chat_body import clean_usage, parse_chat_body, usage_is_clean
from afnio_langchain.models._direct_post import DirectPost
from afnio_langchain.models._openai_adapter import CHAT_COMPLETIONS_PATH, split_request_options

__all__ = ["LeanChatClient"]


def _is_plain(payload: dict[str, Any]) -> bool:
    """Whether the request is plain JSON that the raw API sends as is: not streamed,
    and no pydantic class as ``response_format`` (``.parse`` fills ``message.parsed``
    from it, which ``with_structured_output`` reads)."""
    return not payload.get("stream") and not isinstance(payload.get("response_format"), type)


def _response_class(http_client: Any) -> type:
    """The response class of the HTTP library under ``http_client`` (httpx's, or the
    one this openai version ships with), found along its class's bases; ``bytes``
    when there is none (``post`` then returns the body alone)."""
    for cls in type(http_client).__mro__:
        library = sys.modules.get(cls.__module__.split(".")[0])
        response = getattr(library, "Response", None)
        if isinstance(response, type) and hasattr(library, "AsyncClient"):
            return response
    return bytes


class _RawReply:
    """What ``with_raw_response`` returns, for a reply body read as a dict."""

    def __init__(self, body: dict[str, Any], http_response: Any) -> None:
        self._body = body
        self.http_response = http_response
        self.headers = getattr(http_response, "headers", {})

    def parse(self) -> dict[str, Any]:
        return self._body


class _RawCompletions:
    """``chat.completions.with_raw_response`` of :class:`LeanChatClient`."""

    def __init__(self, lean: _LeanCompletions) -> None:
        self._lean = lean

    async def create(self, **payload: Any) -> Any:
        return await self._lean.send(self._lean.real.with_raw_response.create, payload, raw=True)

    async def parse(self, **payload: Any) -> Any:
        return await self._lean.send(self._lean.real.with_raw_response.parse, payload, raw=True)


class _LeanCompletions:
    """``chat.completions`` of :class:`LeanChatClient`."""

    def __init__(self, client: openai.AsyncOpenAI, what: str, direct: DirectPost | None) -> None:
        self._client = client
        self._what = what
        self._direct = direct
        self.real = client.chat.completions
        self.with_raw_response = _RawCompletions(self)
        # The HTTP library's response class: post() then returns the response itself,
        # whose headers langchain-openai reads (include_response_headers, gateways).
        self._response_type = _response_class(getattr(client, "_client", None))

    async def send(
        self, typed: Callable[..., Awaitable[Any]], payload: dict[str, Any], *, raw: bool
    ) -> Any:
        """A plain request over the raw request API (the reply, or with ``raw`` its
        ``with_raw_response`` form); anything else through ``typed``, the real method."""
        if not _is_plain(payload):
            return await typed(**payload)
        body, options = split_request_options(payload)
        response = None
        if self._direct is not None:
            response = await self._direct.reply(CHAT_COMPLETIONS_PATH, body, options)
        if response is None:
            response = await self._client.post(
                CHAT_COMPLETIONS_PATH, body=body, options=options, cast_to=self._response_type
            )
        reply = parse_chat_body(
            response if isinstance(response, bytes) else response.content, self._what
        )
        if not usage_is_clean(reply):
            reply = clean_usage(reply)  # a malformed usage block never costs the reply
        return _RawReply(reply, response) if raw else reply

    async def create(self, **payload: Any) -> Any:
        return await self.send(self.real.create, payload, raw=False)

    async def parse(self, **payload: Any) -> Any:
        return await self.send(self.real.parse, payload, raw=False)


class _LeanChat:
    def __init__(self, completions: _LeanCompletions, real_chat: Any) -> None:
        self.completions = completions
        self._real_chat = real_chat

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real_chat, name)


class LeanChatClient:
    """An ``openai.AsyncOpenAI`` whose plain chat-completion requests skip the typed
    layer (see the module doc); every other attribute is the wrapped client's.

    Args:
        client: The openai client the requests go through.
        what: Who answers (``"model 'gpt-4o-mini'"``), for errors about reply bodies.
        direct: Set for a client the package built itself: its plain requests are
            sent with :class:`~afnio_langchain.models._direct_post.DirectPost`.

    Example:
        >>> import openai
        >>> from afnio_langchain.models._lean_completions import LeanChatClient
        >>> lean = LeanChatClient(openai.AsyncOpenAI(api_key="sk-test"), "model 'm'")
        >>> lean.base_url == lean.client.base_url, hasattr(lean.chat.completions, "create")
        (True, True)
    """

    def __init__(self, client: openai.AsyncOpenAI, what: str, *, direct: bool = False) -> None:
        self.client = client
        post = DirectPost(client) if direct else None
        self.chat = _LeanChat(_LeanCompletions(client, what, post), client.chat)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)
