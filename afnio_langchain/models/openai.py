"""afnio's model clients, ``OpenAI`` and ``AsyncOpenAI``: real ``openai`` clients (so
they go wherever an ``openai.OpenAI``/``AsyncOpenAI`` does: ``ChatCompletion``, TGD,
``set_backward_model_client``) that also speak afnio's client API: ``chat`` /
``achat`` returning the reply text, and ``get_usage`` / ``clear_usage``.

They talk to whatever ``base_url`` says (any OpenAI-compatible endpoint: a local
llama.cpp server, a proxy, the package's loopback test server), with the user's own
key; nothing goes to Tellurio.

Example:
    >>> from afnio_langchain.models.openai import AsyncOpenAI
    >>> client = AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key="local")
    >>> client.get_usage()["total_tokens"], client.get_provider()
    (0, 'openai')
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import openai

from afnio_langchain.models._usage import token_count

PROVIDER = "openai"
CURRENCY = "USD"

Prices = Mapping[str, tuple[float, float]]
"""Model name -> (USD per 1M input tokens, USD per 1M output tokens)."""


class _Usage:
    """Token counts of every chat completion a client (and its copies) received, and
    their cost from a price table (models missing from it are listed as unpriced)."""

    def __init__(self, prices: Prices | None) -> None:
        self.prices = dict(prices or {})
        self._lock = threading.Lock()
        self._per_model: dict[str, list[int]] = {}

    def record(self, path: str, response: Any) -> None:
        if not path.rstrip("/").endswith("chat/completions"):
            return
        if isinstance(response, (str, bytes)):  # a raw body (the package's adapter)
            if ('"usage"' if isinstance(response, str) else b'"usage"') not in response:
                return
            try:
                body = json.loads(response)
            except ValueError:  # not JSON, not UTF-8: the adapter reports it
                return
            if not isinstance(body, Mapping):
                return
            usage, model = body.get("usage"), body.get("model")
        else:
            usage, model = getattr(response, "usage", None), getattr(response, "model", None)
            usage = usage.model_dump() if hasattr(usage, "model_dump") else usage
        if not isinstance(usage, Mapping):
            return
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        with self._lock:
            counts = self._per_model.setdefault(str(model or ""), [0, 0])
            counts[0] += prompt
            counts[1] += completion

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            per_model = {m: tuple(c) for m, c in self._per_model.items()}
        prompt = sum(c[0] for c in per_model.values())
        completion = sum(c[1] for c in per_model.values())
        amount, unpriced = 0.0, []
        for model, (tokens_in, tokens_out) in per_model.items():
            price = self.prices.get(model)
            if price is None:
                unpriced.append(model)
                continue
            amount += (tokens_in * price[0] + tokens_out * price[1]) / 1_000_000
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": {"amount": amount, "currency": CURRENCY},
            "unpriced_models": sorted(unpriced),
        }

    def clear(self) -> None:
        with self._lock:
            self._per_model.clear()


class _ClientAPI:
    """afnio's client methods, shared by the sync and async clients (it comes first in
    their bases, so its ``__init__`` and ``copy`` wrap the ``openai`` client's)."""

    _afnio_usage: _Usage

    def __init__(
        self,
        api_key: Any = None,
        organization: str | None = None,
        project: str | None = None,
        base_url: Any = None,
        *,
        prices: Prices | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            api_key=api_key, organization=organization, project=project, base_url=base_url, **kwargs
        )
        self._afnio_usage = _Usage(prices)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        new = super().copy(*args, **kwargs)  # type: ignore[misc]
        new._afnio_usage = self._afnio_usage  # copies count into the same usage
        return new

    with_options = copy

    def get_provider(self) -> str:
        """The provider name, ``"openai"``."""
        return PROVIDER

    def get_usage(self) -> dict[str, Any]:
        """Tokens received so far (this client and its copies) and their cost in USD,
        from the ``prices`` given to the client; models without a price cost 0 and are
        listed under ``unpriced_models``."""
        return self._afnio_usage.as_dict()

    def clear_usage(self) -> None:
        """Reset the token counts to zero."""
        self._afnio_usage.clear()


def _reply_text(response: Any) -> str:
    return response.choices[0].message.content or ""


class _CallableChat:
    """``client.chat``: openai's resource (``client.chat.completions.create``) that can
    also be called as afnio's ``client.chat(messages=..., model=...)``."""

    def __init__(self, resource: Any) -> None:
        self._resource = resource

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resource, name)

    def __call__(self, *, messages: Any, model: str, **kwargs: Any) -> str:
        return _reply_text(self._resource.completions.create(messages=messages, model=model, **kwargs))


class OpenAI(_ClientAPI, openai.OpenAI):
    """afnio's synchronous OpenAI client: an ``openai.OpenAI`` with afnio's
    ``chat(messages=..., model=..., **completion_args) -> str`` and usage counters.

    Args:
        api_key: The key (default ``OPENAI_API_KEY``); sent only to ``base_url``.
        base_url: Any OpenAI-compatible endpoint (default ``OPENAI_BASE_URL`` or
            OpenAI's).
        prices: Model name -> (USD per 1M input tokens, USD per 1M output tokens), for
            the cost in :meth:`get_usage`.
        **kwargs: The other ``openai.OpenAI`` options (``timeout``, ``max_retries``,
            ``default_headers``, ``http_client``...).

    Example:
        >>> from afnio_langchain.models.openai import OpenAI
        >>> from afnio_langchain.testing import OpenAICompatServer
        >>> with OpenAICompatServer(responder=lambda request: "Ciao") as server:
        ...     client = OpenAI(base_url=server.base_url, api_key="local")
        ...     client.chat(messages=[{"role": "user", "content": "Hello in Italian?"}],
        ...                 model="local-model")
        'Ciao'
    """

    def post(self, path: str, *args: Any, **kwargs: Any) -> Any:
        response = super().post(path, *args, **kwargs)
        self._afnio_usage.record(path, response)
        return response

    @cached_property
    def chat(self) -> Any:  # type: ignore[override]
        return _CallableChat(openai.OpenAI.chat.func(self))  # type: ignore[attr-defined]


class AsyncOpenAI(_ClientAPI, openai.AsyncOpenAI):
    """afnio's asynchronous OpenAI client: an ``openai.AsyncOpenAI`` with afnio's
    ``await achat(messages=..., model=..., **completion_args) -> str`` and usage
    counters. Arguments as :class:`OpenAI`.

    Example:
        >>> import asyncio
        >>> from afnio_langchain.models.openai import AsyncOpenAI
        >>> from afnio_langchain.testing import OpenAICompatServer
        >>> with OpenAICompatServer(responder=lambda request: "Hola") as server:
        ...     client = AsyncOpenAI(base_url=server.base_url, api_key="local")
        ...     asyncio.run(client.achat(messages=[{"role": "user", "content": "Hi?"}],
        ...                              model="local-model"))
        'Hola'
    """

    async def post(self, path: str, *args: Any, **kwargs: Any) -> Any:
        response = await super().post(path, *args, **kwargs)
        self._afnio_usage.record(path, response)
        return response

    async def achat(self, *, messages: Any, model: str, **kwargs: Any) -> str:
        """One chat completion; returns the reply text."""
        return _reply_text(await self.chat.completions.create(messages=messages, model=model, **kwargs))


__all__ = ["AsyncOpenAI", "OpenAI", "Prices"]
