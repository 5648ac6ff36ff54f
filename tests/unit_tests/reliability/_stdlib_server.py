"""An OpenAI-style chat-completions server built on ``http.server`` alone.

Written for these tests, independently of ``afnio_langchain.testing``: it shares no
code with the package, knows nothing of its prompts beyond what any model could read
in a request, and every reply is what a test's handler says, byte for byte (status,
headers, body, or a body sent in timed pieces, or a dropped connection).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    """One request the server received."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any  # the decoded JSON body, or None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("messages", []))

    @property
    def text(self) -> str:
        """Every message's content, joined."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)

    @property
    def last_user(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1]["content"]) if users else ""

    @property
    def streaming(self) -> bool:
        return bool((self.body or {}).get("stream"))


@dataclass
class Reply:
    """What the server sends back for one request.

    ``body`` (bytes, str or a JSON-ready object) is sent whole; ``pieces`` are sent
    one by one with chunked transfer encoding, ``delay`` seconds apart; ``reset``
    closes the connection with a TCP reset and sends nothing.
    """

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    pieces: Sequence[bytes] | None = None
    delay: float = 0.0
    reset: bool = False

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


Handler = Callable[[Request], Reply]

_KEYS = re.compile(r"exactly these keys: (.+?)\.\s*$", re.M)


def asked_keys(request: Request) -> list[str]:
    """The JSON keys a request asks for: from its JSON schema when it sends one, else
    from the last user message's closing instruction (what any model would read)."""
    fmt = (request.body or {}).get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    if schema.get("properties"):
        return list(schema["properties"])
    found = _KEYS.findall(request.last_user)
    return re.findall(r'"([^"]+)"', found[-1]) if found else []


def completion(
    text: str | None,
    *,
    finish_reason: str | None = "stop",
    usage: Any = None,
    model: str = "test-model",
    refusal: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A chat-completion body; with ``refusal`` or ``tool_calls``, its message carries
    them as OpenAI sends them (``message.refusal``, ``message.tool_calls``)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
    }
    message = body["choices"][0]["message"]
    if refusal is not None:
        message["refusal"] = refusal
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    body["usage"] = (
        {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15} if usage is None else usage
    )
    return body


def tool_call(name: str = "search", arguments: str = '{"q": "weather"}') -> dict[str, Any]:
    """One entry of ``message.tool_calls``."""
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def chat(text: str, **options: Any) -> Reply:
    """A 200 reply holding ``text``."""
    return Reply(body=completion(text, **options))


CACHED_USAGE = {
    "prompt_tokens": 40,
    "completion_tokens": 5,
    "total_tokens": 45,
    "prompt_tokens_details": {"cached_tokens": 32},
}


def two_plus_two(request: Request) -> Reply:
    """The reply ``4`` (``{"answer": "4"}`` when a ``response_format`` is asked for),
    with cached-token usage, a system fingerprint and a request id header."""
    text = '{"answer": "4"}' if (request.body or {}).get("response_format") else "4"
    return Reply(
        body={**completion(text, usage=CACHED_USAGE), "system_fingerprint": "fp-1"},
        headers={"x-request-id": "req-9"},
    )


def sse(
    pieces: Sequence[str],
    *,
    finish: bool = True,
    done: bool = True,
    delay: float = 0.0,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    error_event: bool = False,
) -> Reply:
    """A streamed reply: one chunk per piece; with ``finish``, a last chunk carrying the
    finish reason; with ``usage``, then a chunk with no choices carrying it (what OpenAI
    sends for ``stream_options={"include_usage": true}``); with ``done``, the closing
    ``[DONE]``. Without both, the stream just ends (cleanly, as a dropped upstream looks
    to the client). With ``error``, the pieces are followed by an error event
    (``data: {"error": ...}``, after an ``event: error`` line with ``error_event``) and
    the stream ends there, as a provider failing mid-reply ends it."""

    def chunk_event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "test-model",
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def event(delta: dict[str, Any], reason: str | None) -> bytes:
        return chunk_event([{"index": 0, "delta": delta, "finish_reason": reason}])

    events = [event({"role": "assistant", "content": ""}, None)]
    events += [event({"content": piece}, None) for piece in pieces]
    if error is not None:
        line = b"event: error\n" if error_event else b""
        events.append(line + b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
        return Reply(pieces=events, delay=delay, content_type="text/event-stream")
    if finish:
        events.append(event({}, finish_reason))
    if usage is not None:
        events.append(chunk_event([], usage=usage))
    if done:
        events.append(b"data: [DONE]\n\n")
    return Reply(pieces=events, delay=delay, content_type="text/event-stream")


class StdlibServer:
    """A threaded HTTP server on 127.0.0.1 answering every POST with ``handler``.

    Use as a context manager; ``base_url`` ends in ``/v1``; ``requests`` lists what
    came in. ``handler`` may be swapped at any time.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._answer(b"")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                self._answer(self.rfile.read(length))

            def _answer(self, raw: bytes) -> None:
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                with outer._lock:
                    request = Request(
                        len(outer.requests), self.command, self.path,
                        {k.lower(): v for k, v in self.headers.items()}, raw, body,
                    )
                    outer.requests.append(request)
                reply = outer.handler(request)
                if reply.reset:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    return
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.pieces is None:
                    payload = reply.payload()
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    if reply.delay:
                        time.sleep(reply.delay)
                    self.wfile.write(payload)
                    self.wfile.flush()
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for piece in reply.pieces:
                    if reply.delay:
                        time.sleep(reply.delay)
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a trickling reply must not hold the test
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> StdlibServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, predicate: Callable[[Request], bool] = lambda r: True) -> int:
        with self._lock:
            return sum(1 for r in self.requests if predicate(r))
