"""A loopback OpenAI-compatible chat-completions server for tests and benchmarks.

Standard library only. It answers ``POST /v1/chat/completions`` (plain and
``stream: true``) and ``GET /v1/models`` on ``127.0.0.1``, records every request body,
and can inject the failures real providers produce (rate limits with and without
``retry-after``, server errors, timeouts, dropped or truncated connections, malformed
or empty replies, llama.cpp's refusal of ``json_schema`` response formats) so that the
retry, fallback and usage-counting paths can be exercised with the real ``openai``
and ``langchain-openai`` clients, offline.
"""

from __future__ import annotations

import collections
import json
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

from afnio_langchain.models import required_keys_in

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "OpenAICompatServer",
    "Responder",
    "count_tokens",
    "default_responder",
    "request_text",
]

Responder = Callable[[dict[str, Any]], str]
"""Takes a request body (a dict) and returns the reply text."""

FAULT_KINDS = (
    "status",
    "refuse_json_schema",
    "timeout",
    "reset",
    "truncated",
    "malformed",
    "empty_choices",
    "empty_content",
    "long",
)

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_LLAMA_CPP_REFUSAL = (
    'response_format type must be one of "text" or "json_object", but got: json_schema'
)


@dataclass(frozen=True)
class Fault:
    """One injected failure, consumed by one request.

    Every fault first waits ``delay`` seconds, then acts according to ``kind``:

    - ``status``: answers HTTP ``status`` with an OpenAI-style JSON error body (or
      ``body`` verbatim), with ``retry-after`` / ``retry-after-ms`` headers when set.
    - ``refuse_json_schema``: HTTP 500, as llama.cpp's server does, if the request
      asks for ``response_format.type == "json_schema"``; otherwise a normal answer.
    - ``timeout``: a normal answer after ``delay`` seconds (set it past the client's
      timeout).
    - ``reset``: closes the connection (with a TCP reset) without any response.
    - ``truncated``: sends headers whose ``Content-Length`` exceeds the body, then closes.
    - ``malformed``: HTTP 200 whose body is not JSON (``body``, or a default).
    - ``empty_choices``: HTTP 200, a valid completion with ``choices: []``.
    - ``empty_content``: HTTP 200, a completion whose content is ``""``.
    - ``long``: HTTP 200, a reply of about ``size`` characters.

    Prefer the constructors (``Fault.http(503)``, ``Fault.rate_limit(0.3)``, ...).

    Example:
        >>> from afnio_langchain.testing import Fault
        >>> Fault.rate_limit(retry_after=0.3).status
        429
        >>> Fault.timeout(1.5).delay
        1.5
    """

    kind: str
    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    delay: float = 0.0
    body: str | None = None
    size: int = 200_000
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.kind == "status" and (self.status is None or not 100 <= self.status <= 599):
            raise ValueError(f"a status fault needs an HTTP status, got {self.status!r}")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")

    @classmethod
    def http(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        body: str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """An HTTP error ``status`` with an OpenAI-style JSON error body."""
        return cls(
            "status",
            status=status,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            body=body,
            delay=delay,
        )

    @classmethod
    def rate_limit(
        cls, retry_after: float | None = None, *, retry_after_ms: float | None = None
    ) -> Fault:
        """HTTP 429, with a ``retry-after`` (seconds) or ``retry-after-ms`` header if given."""
        return cls.http(429, retry_after=retry_after, retry_after_ms=retry_after_ms)

    @classmethod
    def refuse_json_schema(cls) -> Fault:
        """HTTP 500 if the request asks for a ``json_schema`` response format."""
        return cls("refuse_json_schema")

    @classmethod
    def timeout(cls, delay: float) -> Fault:
        """Answer normally, but only after ``delay`` seconds."""
        return cls("timeout", delay=delay)

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection without a response."""
        return cls("reset")

    @classmethod
    def truncated(cls) -> Fault:
        """Send headers announcing more body than is sent, then close."""
        return cls("truncated")

    @classmethod
    def malformed(cls, body: str | None = None, *, content_type: str = "application/json") -> Fault:
        """HTTP 200 with a body that is not JSON."""
        return cls("malformed", body=body, content_type=content_type)

    @classmethod
    def empty_choices(cls) -> Fault:
        """HTTP 200 with ``choices: []``."""
        return cls("empty_choices")

    @classmethod
    def empty_content(cls) -> Fault:
        """HTTP 200 with an empty message content."""
        return cls("empty_content")

    @classmethod
    def long(cls, size: int = 200_000) -> Fault:
        """HTTP 200 with a reply of about ``size`` characters."""
        return cls("long", size=size)


FaultLike = Union[Fault, int, str]


def _as_fault(fault: FaultLike) -> Fault:
    if isinstance(fault, Fault):
        return fault
    if isinstance(fault, bool):
        raise TypeError(f"expected a Fault, an HTTP status or a fault kind, got {fault!r}")
    if isinstance(fault, int):
        return Fault.http(fault)
    if isinstance(fault, str):
        return Fault(fault)
    raise TypeError(f"expected a Fault, an HTTP status or a fault kind, got {fault!r}")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def request_text(body: dict[str, Any]) -> str:
    """The concatenated text of a request's message contents, one message per line."""
    messages = body.get("messages") or []
    return "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))


def count_tokens(text: str) -> int:
    """The server's token count: whitespace-separated words."""
    return len(text.split())


def default_responder(body: dict[str, Any]) -> str:
    """The default reply: a JSON object when the package's JSON-keys instruction is in the
    request (``{"<key>": "feedback for <key>"}``), else ``"echo: <last user message>"``."""
    keys = required_keys_in(request_text(body))
    if keys:
        return json.dumps({key: f"feedback for {key}" for key in keys})
    last_user = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = _content_text(message.get("content"))
    return f"echo: {last_user}"


def _wants_json_schema(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_schema"


def _long_text(size: int) -> str:
    word = "lorem "
    return (word * (size // len(word) + 1))[: max(size, 1)]


class _Disconnect(Exception):
    """The client went away while we were answering."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], owner: OpenAICompatServer) -> None:
        self.owner = owner
        self._track_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._handle_connection,
            args=(request, client_address),
            name="openai-compat-server-conn",
            daemon=True,
        )
        with self._track_lock:
            self._connections.add(request)
            self._handler_threads.add(thread)
        thread.start()

    def _handle_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._track_lock:
                self._connections.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, resets) are expected here; stay quiet.
        pass

    def close_connections(self, join_timeout: float) -> None:
        """Wake every handler blocked on a connection and wait for them to finish."""
        with self._track_lock:
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + join_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def alive_handler_threads(self) -> int:
        with self._track_lock:
            return sum(t.is_alive() for t in self._handler_threads)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "afnio-openai-compat/1.0"
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for
    # the client's delayed ACK (~40 ms a reply on Linux). TCP_NODELAY sends it at once.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # -- plumbing ---------------------------------------------------------------------

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError) as exc:
            self.close_connection = True
            raise _Disconnect from exc

    def _send(
        self,
        status: int,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = (
            payload
            if isinstance(payload, bytes)
            else (
                payload.encode("utf-8")
                if isinstance(payload, str)
                else json.dumps(payload).encode()
            )
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._write(data)

    def _error(self, status: int, message: str, **headers: str) -> None:
        error_type = _STATUS_TYPES.get(status, "server_error" if status >= 500 else "api_error")
        self._send(
            status,
            {"error": {"message": message, "type": error_type, "param": None, "code": status}},
            headers=headers,
        )

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- routes -----------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        try:
            if self._path() in ("/v1/models", "/models"):
                owner = self.server.owner
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {"id": name, "object": "model", "created": 0, "owned_by": "afnio"}
                            for name in owner.models
                        ],
                    },
                )
            else:
                self._error(404, f"no route for GET {self.path}")
        except _Disconnect:
            pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        try:
            raw = self._read_body()
            if self._path() not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route for POST {self.path}")
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body is not an object")
            except ValueError as exc:
                self._error(400, f"request body is not a JSON object: {exc}")
                return
            self._chat_completions(body)
        except _Disconnect:
            pass

    def _chat_completions(self, body: dict[str, Any]) -> None:
        owner = self.server.owner
        owner._record(body)
        if owner.refuse_json_schema and _wants_json_schema(body):
            self._error(500, _LLAMA_CPP_REFUSAL)
            return
        fault = owner._next_fault()
        if fault is not None:
            if fault.delay and owner._sleep(fault.delay):
                self.close_connection = True
                return
            if self._apply_fault(fault, body):
                return
        try:
            text = owner.responder(body)
            if not isinstance(text, str):
                raise TypeError(f"responder returned {type(text).__name__}, expected str")
        except Exception as exc:  # a broken responder is a test bug: say so in the reply
            owner._record_error(exc)
            self._error(500, f"responder failed: {type(exc).__name__}: {exc}")
            return
        self._answer(body, text)

    # -- answers ----------------------------------------------------------------------

    def _apply_fault(self, fault: Fault, body: dict[str, Any]) -> bool:
        """Act on ``fault``; True if the request has been fully dealt with."""
        kind = fault.kind
        if kind == "status":
            assert fault.status is not None
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = f"{fault.retry_after:g}"
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = f"{fault.retry_after_ms:g}"
            if fault.body is not None:
                self._send(fault.status, fault.body, headers=headers)
            else:
                self._error(fault.status, f"injected HTTP {fault.status}", **headers)
            return True
        if kind == "refuse_json_schema":
            if _wants_json_schema(body):
                self._error(500, _LLAMA_CPP_REFUSAL)
                return True
            return False
        if kind == "timeout":
            return False
        if kind == "reset":
            try:  # linger 0: close() sends a TCP RST instead of a FIN
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            except OSError:
                pass
            self.close_connection = True
            return True
        if kind == "truncated":
            self.close_connection = True
            data = b'{"id": "chatcmpl-truncated", "object": "chat.completion", "choi'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data) + 4096))
            self.send_header("Connection", "close")
            self.end_headers()
            self._write(data)
            return True
        if kind == "malformed":
            self.close_connection = bool(body.get("stream"))
            data = (
                fault.body if fault.body is not None else "<html>502 Bad Gateway</html> {not json"
            )
            if body.get("stream"):
                self._begin_stream()
                self._stream_event(f"data: {data}\n\n")
                self._end_stream()
            else:
                self._send(200, data, content_type=fault.content_type)
            return True
        if kind == "empty_choices":
            if body.get("stream"):
                self._begin_stream()
                self._stream_event(self._sse(self._chunk(body, [])))
                self._stream_event("data: [DONE]\n\n")
                self._end_stream()
            else:
                reply = self._completion(body, "")
                reply["choices"] = []
                self._send(200, reply)
            return True
        if kind == "empty_content":
            self._answer(body, "")
            return True
        if kind == "long":
            self._answer(body, _long_text(fault.size))
            return True
        raise AssertionError(f"unhandled fault kind {kind!r}")

    def _completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        owner = self.server.owner
        n = body.get("n") or 1
        prompt_tokens = count_tokens(request_text(body))
        completion_tokens = count_tokens(text) * n
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or owner.models[0],
            "system_fingerprint": None,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _answer(self, body: dict[str, Any], text: str) -> None:
        owner = self.server.owner
        if body.get("stream"):
            self._answer_stream(body, text)
            return
        reply = self._completion(body, text)
        wait = owner.latency + owner.per_token_latency * reply["usage"]["completion_tokens"]
        if wait > 0 and owner._sleep(wait):
            self.close_connection = True
            return
        self._send(200, reply)

    # -- streaming (chunked transfer encoding, server-sent events) -----------------------

    def _begin_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _stream_event(self, event: str) -> None:
        data = event.encode("utf-8")
        self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_stream(self) -> None:
        self._write(b"0\r\n\r\n")

    @staticmethod
    def _sse(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    def _chunk(
        self, body: dict[str, Any], choices: list[dict[str, Any]], chunk_id: str = ""
    ) -> dict[str, Any]:
        return {
            "id": chunk_id or f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or self.server.owner.models[0],
            "system_fingerprint": None,
            "choices": choices,
        }

    def _answer_stream(self, body: dict[str, Any], text: str) -> None:
        owner = self.server.owner
        if owner.latency > 0 and owner._sleep(owner.latency):
            self.close_connection = True
            return
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        pieces = re.findall(r"\s*\S+\s*", text) or [text]
        self._begin_stream()
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        self._stream_event(self._sse(self._chunk(body, [first], chunk_id)))
        for piece in pieces:
            if owner.per_token_latency > 0 and owner._sleep(owner.per_token_latency):
                self.close_connection = True
                return
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            self._stream_event(self._sse(self._chunk(body, [choice], chunk_id)))
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        self._stream_event(self._sse(self._chunk(body, [last], chunk_id)))
        stream_options = body.get("stream_options") or {}
        if isinstance(stream_options, dict) and stream_options.get("include_usage"):
            prompt_tokens = count_tokens(request_text(body))
            completion_tokens = count_tokens(text)
            usage_chunk = self._chunk(body, [], chunk_id)
            usage_chunk["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            self._stream_event(self._sse(usage_chunk))
        self._stream_event("data: [DONE]\n\n")
        self._end_stream()


class OpenAICompatServer:
    """An OpenAI-compatible chat-completions server on the loopback interface.

    Runs a threaded HTTP server in a daemon thread (one thread per connection, so many
    concurrent requests, each possibly sleeping for injected latency, are served at
    once). Point any OpenAI client at :attr:`base_url`.

    Args:
        responder: Takes the request body (a dict) and returns the reply text.
            Defaults to :func:`default_responder` (JSON for the package's JSON-keys
            instruction, an echo of the last user message otherwise).
        latency: Seconds to wait before each answer.
        per_token_latency: Extra seconds per completion token (whitespace word).
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.
        refuse_json_schema: Answer HTTP 500 to every request asking for a
            ``json_schema`` response format, like llama.cpp's server.
        models: Model ids listed by ``GET /v1/models`` (the first is used when a
            request names none).

    Attributes:
        responder, latency, per_token_latency, refuse_json_schema: May be changed
            while the server runs; they apply to the next requests.

    Example:
        >>> import openai
        >>> from afnio_langchain.testing import Fault, OpenAICompatServer
        >>> with OpenAICompatServer() as server:
        ...     client = openai.OpenAI(base_url=server.base_url, api_key="test-key")
        ...     reply = client.chat.completions.create(
        ...         model="fake-model", messages=[{"role": "user", "content": "hello"}]
        ...     )
        ...     server.inject(Fault.http(503))
        ...     try:
        ...         client.with_options(max_retries=0).chat.completions.create(
        ...             model="fake-model", messages=[{"role": "user", "content": "again"}]
        ...         )
        ...     except openai.InternalServerError as exc:
        ...         status = exc.status_code
        >>> reply.choices[0].message.content
        'echo: hello'
        >>> reply.usage.completion_tokens
        2
        >>> status
        503
        >>> [body["messages"][0]["content"] for body in server.requests]
        ['hello', 'again']
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: float = 0.0,
        per_token_latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        refuse_json_schema: bool = False,
        models: Sequence[str] = ("fake-model",),
    ) -> None:
        if latency < 0 or per_token_latency < 0:
            raise ValueError("latency and per_token_latency must be >= 0")
        if not models:
            raise ValueError("models must name at least one model")
        self.responder: Responder = responder or default_responder
        self.latency = float(latency)
        self.per_token_latency = float(per_token_latency)
        self.refuse_json_schema = bool(refuse_json_schema)
        self.models = tuple(models)
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._faults: collections.deque[Fault] = collections.deque()
        self._served_faults: list[Fault] = []
        self._errors: list[BaseException] = []
        self._fault_rate = 0.0
        self._fault_choices: tuple[Fault, ...] = ()
        self._rng = random.Random()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> OpenAICompatServer:
        """Bind and start serving in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("the server is already running")
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self._requested_port), self)
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-compat-server",
            daemon=True,
        )
        self._httpd, self._thread = httpd, thread
        thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, drop open connections and wait for the handler threads.

        Handlers sleeping for latency or a ``timeout`` fault are woken at once.
        Calling it on a stopped server does nothing.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections(join_timeout=timeout)
        if thread is not None:
            thread.join(timeout)
        self._httpd = self._thread = None

    def __enter__(self) -> OpenAICompatServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._httpd is not None

    @property
    def port(self) -> int:
        """The bound port."""
        if self._httpd is None:
            raise RuntimeError("the server is not running: call start() or use `with`")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The root URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    # -- what was received ----------------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of the chat-completion request bodies received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many chat-completion requests arrived."""
        with self._lock:
            return len(self._requests)

    @property
    def served_faults(self) -> list[Fault]:
        """The faults used so far (queued or random), in the order they were used."""
        with self._lock:
            return list(self._served_faults)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by the responder (each was answered with HTTP 500)."""
        with self._lock:
            return list(self._errors)

    @property
    def pending_faults(self) -> int:
        """How many queued faults are still waiting for a request."""
        with self._lock:
            return len(self._faults)

    def reset(self) -> None:
        """Forget received requests, queued faults, served faults and the random fault rate."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._served_faults.clear()
            self._errors.clear()
            self._fault_rate = 0.0
            self._fault_choices = ()

    # -- fault injection --------------------------------------------------------------------

    def inject(self, fault: FaultLike, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` chat-completion requests.

        Queued faults are consumed in order, one per request, before any random fault.
        A request refused by ``refuse_json_schema=True`` consumes none.

        Args:
            fault: A :class:`Fault`, an HTTP status (``429``) or a kind (``"reset"``).
            times: How many consecutive requests it applies to.
        """
        resolved = _as_fault(fault)
        if times < 0:
            raise ValueError("times must be >= 0")
        with self._lock:
            self._faults.extend([resolved] * times)

    def fault_rate(
        self, p: float, faults: Iterable[FaultLike] | None = None, seed: int | None = None
    ) -> None:
        """Make each request (with no queued fault) fail with probability ``p``.

        Args:
            p: Probability in ``[0, 1]``; 0 switches random faults off.
            faults: Faults to pick from uniformly; by default the transient ones
                (429, 500, 502, 503, reset, malformed, empty choices).
            seed: Seed for reproducible runs.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        if faults is None:
            choices: tuple[Fault, ...] = (
                Fault.rate_limit(),
                Fault.http(500),
                Fault.http(502),
                Fault.http(503),
                Fault.reset(),
                Fault.malformed(),
                Fault.empty_choices(),
            )
        else:
            choices = tuple(_as_fault(f) for f in faults)
        if p > 0 and not choices:
            raise ValueError("faults must not be empty when p > 0")
        with self._lock:
            self._fault_rate = float(p)
            self._fault_choices = choices
            self._rng = random.Random(seed)

    # -- internals used by the handler ------------------------------------------------------

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(body)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            fault: Fault | None = None
            if self._faults:
                fault = self._faults.popleft()
            elif self._fault_rate > 0 and self._rng.random() < self._fault_rate:
                fault = self._rng.choice(self._fault_choices)
            if fault is not None:
                self._served_faults.append(fault)
            return fault

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; True if the server is stopping."""
        return self._stopping.wait(seconds)

    def __repr__(self) -> str:
        where = self.base_url if self.running else "stopped"
        return f"OpenAICompatServer({where}, requests={self.request_count})"
