"""The benchmarks' loopback chat-completions server: one event loop, replies on timers.

The critical-path bound assumes a server that answers every call a fixed latency after
it arrives, however many arrive together, as a provider's fleet does. The test server
(:class:`~afnio_langchain.testing.OpenAICompatServer`, the standard library's threaded
HTTP server) spends about 430 µs of CPU per request, and its handler threads take turns
at one interpreter lock: 32 requests written within 1 ms got their replies over the
next 5-19 ms (``docs/performance.md``, round thirteen), so part of every step's distance
from the bound was the fixture's. Here one asyncio loop serves every connection:

- a request's arrival is the loop time at which its first bytes are read; reading only
  stamps it, and the request is parsed and answered after every read of the same loop
  pass is stamped;
- the reply is worked out at once (the responder, the JSON) and written by a timer at
  arrival + latency + per-token latency x output tokens, in arrival order on each
  connection;
- the loop waits on ``select()``, whose timeout has microsecond resolution (epoll's is
  one millisecond, rounded up: every reply would be up to 1 ms late).

It speaks what the benchmarks send: ``POST /v1/chat/completions`` without streaming,
``GET /v1/models``, HTTP/1.1 keep-alive with ``Content-Length`` bodies. The replies are
:class:`~afnio_langchain.testing.OpenAICompatServer`'s, field for field.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import threading
from collections.abc import Callable
from typing import Any

from afnio_langchain.testing import completion_reply

__all__ = ["LoopServer"]

_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MODEL_PATHS = ("/v1/models", "/models")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


class LoopServer:
    """A chat-completions server on 127.0.0.1 whose replies come ``latency`` (plus
    ``per_token_latency`` per output token) after each request arrives.

    Args:
        responder: ``body -> reply text`` (called on the server's loop thread).
        latency: Seconds from a request's arrival to its reply.
        per_token_latency: Extra seconds per output token.
        model: The model name replies carry when a request names none.

    Example:
        >>> import openai
        >>> server = LoopServer(lambda body: "four", latency=0.01).start()
        >>> client = openai.OpenAI(base_url=server.base_url, api_key="k")
        >>> reply = client.chat.completions.create(
        ...     model="m", messages=[{"role": "user", "content": "2 + 2?"}])
        >>> reply.choices[0].message.content, reply.usage.completion_tokens
        ('four', 1)
        >>> client.close(); server.stop()
    """

    def __init__(
        self,
        responder: Callable[[dict[str, Any]], str],
        *,
        latency: float = 0.0,
        per_token_latency: float = 0.0,
        model: str = "fake-model",
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.per_token_latency = per_token_latency
        self.model = model
        self.base_url = ""
        self._loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()

    def start(self) -> LoopServer:
        """Serve from a daemon thread; returns once the port is open."""
        opened = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                self._loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
            )
            port = self._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}/v1"
            opened.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="loop-server", daemon=True)
        self._thread.start()
        if not opened.wait(10):
            raise RuntimeError("the loop server did not start within 10 s")
        return self

    def stop(self) -> None:
        """Close every connection and the loop."""
        if self._thread is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self._connections):
                connection.transport.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop.close()

    def __enter__(self) -> LoopServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- answers (on the loop's thread) ------------------------------------------------

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes, int]:
        """``(status, JSON body, output tokens)`` for one request."""
        path = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path in _MODEL_PATHS:
            listed = [{"id": self.model, "object": "model", "created": 0, "owned_by": "afnio"}]
            return 200, _json({"object": "list", "data": listed}), 0
        if method != "POST" or path not in _CHAT_PATHS:
            return 404, _error(404, f"no route for {method} {path}"), 0
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("body is not an object")
        except ValueError as exc:
            return 400, _error(400, f"request body is not a JSON object: {exc}"), 0
        if request.get("stream"):
            return 400, _error(400, "this benchmark server does not stream"), 0
        try:
            text = self.responder(request)
        except Exception as exc:  # a broken responder is a benchmark bug: say so
            return 500, _error(500, f"responder failed: {type(exc).__name__}: {exc}"), 0
        reply = completion_reply(request, text, self.model)
        return 200, _json(reply), reply["usage"]["completion_tokens"]


class _Connection(asyncio.Protocol):
    """One client connection: stamps each request's arrival, parses it after the reads
    of the same loop pass, and writes its reply on a timer, in order."""

    def __init__(self, server: LoopServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.arrived: float | None = None
        self.last_due = 0.0
        self.closing = False
        self.parse_due = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.arrived is None:
            self.arrived = self.loop.time()
        self.buffer += data
        if not self.parse_due:
            self.parse_due = True
            self.loop.call_soon(self._parse)

    def _parse(self) -> None:
        self.parse_due = False
        while not self.closing:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _version = head[0].split(" ", 2)
            except ValueError:
                self._reply_now(400, _error(400, "malformed request line"), close=True)
                return
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return  # the body is still on its way
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            arrived = self.arrived if self.arrived is not None else self.loop.time()
            self.arrived = self.loop.time() if self.buffer else None
            status, payload, tokens = self.server.answer(method, target, body)
            close = headers.get("connection", "").lower() == "close"
            wait = self.server.latency + self.server.per_token_latency * tokens
            due = max(arrived + wait, self.last_due)  # replies leave in arrival order
            self.last_due = due
            self.loop.call_at(due, self._write, _response(status, payload, close), close)

    def _reply_now(self, status: int, payload: bytes, *, close: bool) -> None:
        self._write(_response(status, payload, close), close)

    def _write(self, data: bytes, close: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(data)
        if close:
            self.closing = True
            self.transport.close()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _error(status: int, message: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json({"error": {"message": message, "type": kind, "param": None, "code": status}})


def _response(status: int, payload: bytes, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + payload
