"""The loopback server's HTTP side: the chat-completions handler, streaming, and how each
fault is served (one thread per connection)."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from afnio_langchain.testing._faults import _LLAMA_CPP_REFUSAL, _STATUS_TYPES, Fault
from afnio_langchain.testing._responders import (
    _long_text,
    _wants_json_schema,
    completion_reply,
    count_tokens,
    request_text,
)

if TYPE_CHECKING:
    from afnio_langchain.testing._server import OpenAICompatServer


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


def _nothing() -> None:
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "afnio-openai-compat/1.0"
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for
    # the client's delayed ACK (~40 ms a reply on Linux). TCP_NODELAY sends it at once.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def parse_request(self) -> bool:
        # Latency counts from here, as a provider's does from the request's arrival: the
        # handler's own work (parsing, the responder, the reply's JSON) falls inside it
        # rather than after it, so many concurrent requests taking turns at this
        # process's one interpreter lock are not answered later than asked.
        self._arrived = time.monotonic()
        self._answering: Callable[[], None] = _nothing  # the server's count, on a POST
        return super().parse_request()

    def _wait_until(self, seconds_after_arrival: float) -> bool:
        """Sleep until ``seconds_after_arrival`` past the request's arrival; True if
        the server is stopping."""
        left = seconds_after_arrival - (time.monotonic() - self._arrived)
        return left > 0 and self.server.owner._sleep(left)

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
            # counted from arrival until the answer starts going out (_answering), not
            # until this block ends: a client waiting for the answer may send its next
            # request first, and be counted twice
            with self.server.owner._in_flight.counting() as self._answering:
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
                reply = completion_reply(body, "", self.server.owner.models[0])
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

    def _answer(self, body: dict[str, Any], text: str) -> None:
        owner = self.server.owner
        if body.get("stream"):
            self._answer_stream(body, text)
            return
        reply = completion_reply(body, text, owner.models[0])
        data = json.dumps(reply).encode()  # before the wait: it is part of the latency
        wait = owner.latency + owner.per_token_latency * reply["usage"]["completion_tokens"]
        if self._wait_until(wait):
            self.close_connection = True
            return
        self._answering()
        self._send(200, data)

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
        if self._wait_until(owner.latency):
            self.close_connection = True
            return
        self._answering()
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
