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
import random
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from afnio_langchain.testing._faults import FAULT_KINDS, Fault, FaultLike, _as_fault
from afnio_langchain.testing._handler import _HTTPServer
from afnio_langchain.testing._in_flight import InFlightCount
from afnio_langchain.testing._responders import (
    Responder,
    completion_reply,
    count_tokens,
    default_responder,
    request_text,
)

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "OpenAICompatServer",
    "Responder",
    "completion_reply",
    "count_tokens",
    "default_responder",
    "request_text",
]


class OpenAICompatServer:
    """An OpenAI-compatible chat-completions server on the loopback interface.

    Runs a threaded HTTP server in a daemon thread (one thread per connection, so many
    concurrent requests, each possibly sleeping for injected latency, are served at
    once). Point any OpenAI client at :attr:`base_url`.

    Args:
        responder: Takes the request body (a dict) and returns the reply text.
            Defaults to :func:`default_responder` (JSON for the package's JSON-keys
            instruction, an echo of the last user message otherwise).
        latency: Seconds from a request's arrival to its answer (to the first chunk
            of a stream). The server's own work on the request counts in them, as a
            provider's does, so concurrent requests are not answered late.
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
        self._in_flight = InFlightCount()
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
    def max_concurrent_requests(self) -> int:
        """The most chat-completion requests that were in the server at once (from
        arrival until the answer, or its first chunk, starts going out), since the
        start or the last :meth:`reset`.
        With a ``latency``, it tells a test whether a client overlapped its requests
        without timing them."""
        return self._in_flight.peak

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
        """Forget received requests (and their concurrency peak), queued faults, served
        faults and the random fault rate."""
        with self._lock:
            self._requests.clear()
            self._in_flight.reset_peak()
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
