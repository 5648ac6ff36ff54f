"""Requests the package sends straight over aiohttp (``models/_direct_post.py``) are the
requests openai's own client sends, and fail the way openai's own client fails.

After a client copy's first call, the package reuses the request openai built for
it instead of building a new one per call. Seen from the independent stdlib server,
for both the ``openai`` path (``OpenAIClient``) and ``ChatOpenAI``: the same path,
headers and JSON body as a direct call through openai's client; the same exception
types, status codes and messages for error replies, dropped connections and
timeouts; and the cases openai handles per request (an API-key provider, Azure, a
body only its encoder can write) stay on openai's own path.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI

from afnio_langchain.models import LangChainChatModelClient, OpenAIClient, RetryPolicy
from afnio_langchain.models._direct_post import DirectPost
from afnio_langchain.models.openai import AsyncOpenAI as AfnioAsyncOpenAI

from ._stdlib_server import Reply, Request, StdlibServer, completion
from .conftest import FAST, KEY, MODEL

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
VOLATILE_HEADERS = {"content-length", "x-stainless-raw-response", "x-stainless-read-timeout"}
ONCE = RetryPolicy(max_attempts=1)


def _ok(request: Request) -> Reply:
    return Reply(body=completion("4"))


@pytest.fixture
def server():
    with StdlibServer(_ok) as running:
        yield running


def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k not in VOLATILE_HEADERS}


def _package_client(kind: str, server: StdlibServer, retry: RetryPolicy = FAST, **options: Any):
    if kind == "openai":
        raw = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, timeout=5, **options)
        return OpenAIClient(raw, model=MODEL, retry=retry)
    model = ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL, timeout=5, **options)
    return LangChainChatModelClient(model, retry=retry, json_mode=False)


def _calls(client: Any, n: int, **params: Any) -> list[Any]:
    async def run() -> list[Any]:
        return [await client.acomplete(MESSAGES, **params) for _ in range(n)]

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["openai", "chatopenai"])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"temperature": 0.2, "max_tokens": 20, "stop": ["\n"]},
        {"extra_body": {"top_k": 5}, "extra_headers": {"x-team": "search"}},
        {"extra_query": {"api-version": "2024-10"}},
    ],
    ids=["defaults", "sampling", "extra_body_and_headers", "extra_query"],
)
def test_reused_requests_match_the_first_one_openai_built(server, kind, params):
    """The first call goes through openai's client; the next ones are sent directly and
    must reach the server identical to it (the retry count aside, which is 0 for all)."""
    replies = _calls(_package_client(kind, server), 3, **params)
    assert [r.text for r in replies] == ["4", "4", "4"]
    first, *later = server.requests
    for request in later:
        assert request.path == first.path
        assert request.body == first.body
        assert _headers(request) == _headers(first)
    if "extra_body" in params:
        assert first.body["top_k"] == 5 and first.headers["x-team"] == "search"


def test_direct_requests_match_a_plain_openai_client_call(server):
    """Against a call the user makes with openai's own aiohttp client."""
    own = openai.AsyncOpenAI(
        base_url=server.base_url, api_key=KEY, timeout=5, max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )

    async def user_call() -> None:
        await own.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0)
        await own.close()

    asyncio.run(user_call())
    _calls(_package_client("openai", server), 2, temperature=0)
    users, ours = server.requests[0], server.requests[2]
    assert ours.body == users.body and ours.path == users.path
    assert _headers(ours) == _headers(users)


def _direct_post(server: StdlibServer, **options: Any) -> DirectPost:
    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key=KEY, max_retries=0,
        http_client=openai.DefaultAioHttpClient(), **options,
    )
    return DirectPost(client)


def _post_twice(post: DirectPost, body: dict[str, Any], options: dict[str, Any] | None = None):
    async def run() -> list[bytes]:
        try:
            return [await post("/chat/completions", body, options or {}) for _ in range(2)]
        finally:
            await post.client.close()

    return asyncio.run(run())


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=429, body={"error": {"message": "Rate limit reached", "type": "rate"}},
              headers={"retry-after": "1"}),
        Reply(status=500, body={"error": {"message": "The server had an error"}}),
        Reply(status=400, body={"error": {"message": "Bad messages", "code": "bad"}}),
        Reply(status=503, body="<html>upstream down</html>", content_type="text/html"),
    ],
    ids=["429", "500", "400", "503-html"],
)
def test_error_replies_raise_what_openai_raises(server, reply):
    def expected_and_ours() -> tuple[BaseException, BaseException]:
        caught = []
        post = _direct_post(server)

        async def run() -> None:
            server.handler = _ok
            for _ in range(2):  # openai's path reads the platform; then the direct one
                await post("/chat/completions", {"model": MODEL, "messages": MESSAGES}, {})
            server.handler = lambda request: reply
            for send in (post.client.post, None):  # openai's own, then the direct one
                try:
                    if send is None:
                        await post("/chat/completions", {"model": MODEL, "messages": MESSAGES}, {})
                    else:
                        await send("/chat/completions", body={"model": MODEL, "messages": MESSAGES},
                                   cast_to=bytes)
                except openai.APIStatusError as exc:
                    caught.append(exc)
            await post.client.close()

        asyncio.run(run())
        assert post.direct_calls == 2  # the second call and the failing one
        return caught[0], caught[1]

    theirs, ours = expected_and_ours()
    assert type(ours) is type(theirs)
    assert ours.status_code == theirs.status_code == reply.status
    assert str(ours) == str(theirs) and ours.body == theirs.body
    assert ours.response.headers.get("retry-after") == theirs.response.headers.get("retry-after")


def test_a_dropped_connection_is_a_connection_error_and_is_retried(server):
    replies = iter([Reply(body=completion("4")), Reply(reset=True), Reply(body=completion("5"))])
    server.handler = lambda request: next(replies)
    client = _package_client("openai", server)
    assert [r.text for r in _calls(client, 2)] == ["4", "5"]
    assert len(server.requests) == 3


def test_a_reply_slower_than_the_timeout_is_an_api_timeout(server):
    def slow(request: Request) -> Reply:
        if request.index == 0:
            return Reply(body=completion("4"))
        return Reply(body=completion("late"), pieces=[b"", b""], delay=1.0)

    server.handler = slow
    post = _direct_post(server, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        _post_twice(post, {"model": MODEL, "messages": MESSAGES})


def test_a_refused_connection_is_an_api_connection_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    post = DirectPost(
        openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
    )

    async def run() -> list[BaseException]:
        errors = []
        for _ in range(2):  # openai's own path, then the direct one
            try:
                await post("/chat/completions", {"model": MODEL, "messages": MESSAGES}, {})
            except openai.APIConnectionError as exc:
                errors.append(exc)
        await post.client.close()
        return errors

    errors = asyncio.run(run())
    assert len(errors) == 2 and post.direct_calls == 1
    assert str(errors[1].request.url) == f"http://127.0.0.1:{port}/v1/chat/completions"


def test_a_body_only_openais_encoder_can_write_goes_through_openai(server):
    post = _direct_post(server)
    body = {"model": MODEL, "messages": MESSAGES, "metadata": {"at": datetime.datetime(2026, 12, 2, 9, 30)}}
    _post_twice(post, body)
    assert post.direct_calls == 0
    assert [r.body["metadata"] for r in server.requests] == [{"at": "2026-12-02T09:30:00"}] * 2


def test_clients_whose_requests_change_per_call_keep_openais_path(server):
    async def key() -> str:
        return KEY

    provider = DirectPost(openai.AsyncOpenAI(base_url=server.base_url, api_key=key))
    azure = DirectPost(
        openai.AsyncAzureOpenAI(
            azure_endpoint=server.base_url, api_key=KEY, api_version="2024-10-21"
        )
    )

    class Signed(openai.AsyncOpenAI):
        def _build_headers(self, *args: Any, **kwargs: Any) -> Any:
            headers = super()._build_headers(*args, **kwargs)
            headers["x-signature"] = "per-request"
            return headers

    signed = DirectPost(Signed(base_url=server.base_url, api_key=KEY))
    assert not provider.usable and not azure.usable and not signed.usable
    plain = DirectPost(openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY))
    assert plain.usable


def test_a_proxied_endpoint_keeps_openais_path(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("no_proxy", raising=False)
    post = _direct_post(server)

    async def template() -> Any:
        client = post.client
        client._platform = client._platform or "linux"
        try:
            return post._template("/chat/completions", {})
        finally:
            await client.close()

    assert asyncio.run(template()) is None


def test_afnios_client_counts_the_tokens_of_direct_calls(server):
    afnio_client = AfnioAsyncOpenAI(base_url=server.base_url, api_key=KEY)
    client = OpenAIClient(afnio_client, model=MODEL, retry=ONCE)
    _calls(client, 3)
    assert afnio_client.get_usage()["total_tokens"] == 3 * 15


def test_the_direct_path_is_taken_after_the_first_call(server):
    post = _direct_post(server)
    replies = _post_twice(post, {"model": MODEL, "messages": MESSAGES})
    assert post.direct_calls == 1
    assert [json.loads(r)["choices"][0]["message"]["content"] for r in replies] == ["4", "4"]
