"""JSON POSTs of an openai client sent over its own aiohttp session, without building
an httpx request per call.

``client.post`` builds every request from scratch: options are copied and validated,
headers merged and normalised, the URL parsed and joined, an httpx request and
response wrapped around aiohttp's. That is about 0.6 ms of CPU per call, against
0.15 ms for the same POST sent straight through aiohttp (``benchmarks/``), and on one
core it sits on the critical path of a minibatch: the last of 32 requests leaves 31
request-builds after the first.

For the package's own per-loop copies of a client (built on openai's aiohttp backend,
see :func:`~afnio_langchain.models._openai_adapter.default_http_client`) the request
openai would send is built once per endpoint and options, through the client's own
``_build_request``, and reused: same URL, headers, timeouts and connection pool. Only
the JSON body changes from call to call, serialised as openai does. Error replies are
turned into the client's own exceptions (``_make_status_error_from_response``), and
transport failures into ``APITimeoutError`` / ``APIConnectionError`` as ``request``
raises them. Anything this cannot reproduce exactly goes through ``client.post``: the
first call (openai reads the platform there), a client whose auth, request hooks or
transport are not openai's plain ones (API-key providers, Azure, workload identity, a
proxy), options with unhashable values, a body only openai's encoder can serialise.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import Mapping
from typing import Any

import openai

try:
    import aiohttp
except ImportError:  # pragma: no cover - aiohttp comes with openai's aiohttp extra
    aiohttp = None  # type: ignore[assignment]

__all__ = ["DirectPost", "DirectReply"]

# openai.AsyncOpenAI methods that shape a request or read its reply: a client class that
# overrides any of them sends something this module would not, so it keeps client.post.
_REQUEST_HOOKS = (
    "request",
    "_build_request",
    "_build_headers",
    "_prepare_options",
    "_prepare_request",
    "_prepare_url",
    "_send_request",
    "_send_with_auth_retry",
    "_process_response",
    "auth_headers",
    "default_headers",
    "default_query",
    "custom_auth",
)
# Per-client auth that changes from request to request.
_DYNAMIC_AUTH = ("_api_key_provider", "_provider_runtime", "_workload_identity_auth")
_OPTIONS = frozenset({"headers", "params", "timeout", "extra_json"})


def _plain_post_methods() -> tuple[Any, ...]:
    from afnio_langchain.models.openai import AsyncOpenAI as AfnioAsyncOpenAI

    return (openai.AsyncOpenAI.post, AfnioAsyncOpenAI.post)


def _sends_like_openai(client: Any) -> bool:
    """Whether ``client`` builds its requests exactly as ``openai.AsyncOpenAI`` does."""
    if aiohttp is None or not isinstance(client, openai.AsyncOpenAI):
        return False
    cls = type(client)
    if any(getattr(cls, name, None) is not getattr(openai.AsyncOpenAI, name, None)
           for name in _REQUEST_HOOKS):
        return False
    if cls.post not in _plain_post_methods():
        return False
    if any(getattr(client, name, None) is not None for name in _DYNAMIC_AUTH):
        return False
    return getattr(client, "_idempotency_header", None) is None and client.custom_auth is None


class _Template:
    """The request openai builds for one endpoint and set of options, less its body."""

    def __init__(self, request: Any, session: Any) -> None:
        self.request = request
        self.url = str(request.url)
        self.headers = [
            (k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"
        ]
        timeout = request.extensions.get("timeout", {})
        self.timeout = aiohttp.ClientTimeout(
            sock_connect=timeout.get("connect"),
            sock_read=timeout.get("read"),
            connect=timeout.get("pool"),
        )
        self.session = session
        library = sys.modules[type(request).__module__.split(".")[0]]
        self.request_class = library.Request
        self.response_class = library.Response


class DirectReply:
    """A reply sent by :class:`DirectPost`: its status, headers (case-insensitive) and
    body; it stands where langchain-openai reads openai's ``http_response``."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


class DirectPost:
    """``client.post(path, body=..., options=..., cast_to=bytes)`` for a package-built
    copy of an ``openai.AsyncOpenAI`` (see the module doc), the same request and errors
    at a quarter of the CPU.

    Args:
        client: The client copy, on openai's aiohttp backend, used on one event loop.

    Example:
        >>> import asyncio, openai
        >>> from afnio_langchain.models._direct_post import DirectPost
        >>> from afnio_langchain.testing import OpenAICompatServer
        >>> with OpenAICompatServer(responder=lambda request: "4") as server:
        ...     client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k",
        ...                                 http_client=openai.DefaultAioHttpClient())
        ...     post = DirectPost(client)
        ...     body = {"model": "m", "messages": [{"role": "user", "content": "2+2?"}]}
        ...     async def twice():
        ...         replies = [await post("/chat/completions", body, {}) for _ in range(2)]
        ...         await client.close()
        ...         return replies
        ...     [b'"4"' in reply for reply in asyncio.run(twice())], post.direct_calls
        ([True, True], 1)
    """

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self.usable = _sends_like_openai(client)
        self.direct_calls = 0
        self._templates: dict[tuple[Any, ...], _Template | None] = {}

    async def __call__(self, path: str, body: dict[str, Any], options: Mapping[str, Any]) -> bytes:
        """The reply body, as ``client.post(..., cast_to=bytes)`` returns it."""
        reply = await self.reply(path, body, options)
        if reply is None:
            return await self.client.post(path, body=body, options=dict(options), cast_to=bytes)
        return reply.content

    async def reply(
        self, path: str, body: dict[str, Any], options: Mapping[str, Any]
    ) -> DirectReply | None:
        """The reply, sent directly; None when only ``client.post`` can send this one."""
        template = self._template(path, options) if self.usable else None
        if template is None:
            return None
        extra = options.get("extra_json")
        if extra:
            body = {**body, **extra}
        try:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):  # a value only openai's encoder knows (datetime...)
            return None
        self.direct_calls += 1
        reply = await self._send(template, data.encode())
        usage = getattr(self.client, "_afnio_usage", None)
        if usage is not None:  # afnio's client counts tokens in its post()
            usage.record(path, reply.content)
        return reply

    def _template(self, path: str, options: Mapping[str, Any]) -> _Template | None:
        if self.client._platform is None:  # read by openai's first request
            return None
        if not options:  # the usual request: no per-call headers, query or timeout
            key: tuple[Any, ...] = (path,)
        elif not _OPTIONS.issuperset(options) or any(
            isinstance(v, openai.Omit) for v in (options.get("extra_json") or {}).values()
        ):
            return None
        else:
            try:
                key = (path, *((k, _frozen(v)) for k, v in sorted(options.items()) if k != "extra_json"))
                hash(key)
            except TypeError:
                return None
        if key not in self._templates:
            self._templates[key] = self._build(path, options)
        template = self._templates[key]
        if template is not None and template.session.closed:
            return None
        return template

    def _build(self, path: str, options: Mapping[str, Any]) -> _Template | None:
        from openai._models import FinalRequestOptions

        http_client = self.client._client
        fields = {k: v for k, v in options.items() if k != "extra_json"}
        request = self.client._build_request(
            FinalRequestOptions.construct(method="post", url=path, json_data={}, **fields)
        )
        transport_for = getattr(http_client, "_transport_for_url", None)
        transport = transport_for(request.url) if callable(transport_for) else None
        if (
            transport is None
            or not callable(getattr(transport, "get_client", None))
            or getattr(transport, "proxy", None) is not None
            or getattr(transport, "uds", None) is not None
        ):
            return None
        if not isinstance(getattr(transport, "client", None), aiohttp.ClientSession):
            transport.client = transport.get_client()  # as openai's transport does, lazily
        if not isinstance(transport.client, aiohttp.ClientSession):
            return None
        return _Template(request, transport.client)

    async def _send(self, template: _Template, data: bytes) -> DirectReply:
        try:
            async with template.session.request(
                "POST",
                template.url,
                headers=template.headers,
                data=data,
                allow_redirects=False,
                compress=False,
                timeout=template.timeout,
            ) as response:
                content = await response.read()
                status, raw_headers = response.status, response.raw_headers
                headers = response.headers
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise openai.APITimeoutError(request=_request(template, data)) from exc
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            raise openai.APIConnectionError(request=_request(template, data)) from exc
        if not 200 <= status < 300:
            # Decoded already: the error reply is rebuilt without its encoding headers.
            kept = [
                (k, v) for k, v in raw_headers
                if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")
            ]
            reply = template.response_class(
                status, headers=kept, content=content, request=_request(template, data)
            )
            raise self.client._make_status_error_from_response(reply) from None
        return DirectReply(status, headers, content)


def _request(template: _Template, data: bytes) -> Any:
    """The request as openai's own errors carry it."""
    return template.request_class(
        "POST", template.url, headers=template.headers, content=data,
        extensions=template.request.extensions,
    )


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
