"""The loopback server in its own process, as a real model server would be.

Running :class:`~afnio_langchain.testing._server.OpenAICompatServer` in the benchmark's
own process would make its request handling compete with the client for the GIL, and
charge the fake server's CPU time to the library under test. Here it runs in a child
process driven through its stdin and stdout (one JSON command and one JSON answer per
line): reconfigure latency, read and reset the recorded calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.responder import CallRecord

__all__ = ["SERVERS", "ServerProcess"]

SERVERS = ("loop", "threaded")

_CHILD = "import json, sys; from benchmarks.server_process import _serve; _serve(json.loads(sys.argv[1]))"
_ROOT = Path(__file__).resolve().parent.parent


def _serve(settings: dict[str, Any]) -> None:
    """The child: serve, then answer one JSON command per stdin line on stdout."""
    if settings.get("cpus"):  # before the server's thread starts: it inherits them
        os.sched_setaffinity(0, settings["cpus"])
    from afnio_langchain.testing import OpenAICompatServer
    from benchmarks.loop_server import LoopServer
    from benchmarks.responder import BenchmarkResponder

    responder = BenchmarkResponder(settings["forward_words"], settings["feedback_words"])
    kind = {"loop": LoopServer, "threaded": OpenAICompatServer}[settings["server"]]
    server: Any = kind(
        responder, latency=settings["latency"], per_token_latency=settings["per_token_latency"]
    ).start()

    def send(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    send(server.base_url)
    try:
        for line in sys.stdin:
            command, *args = json.loads(line)
            if command == "records":
                send([list(vars(r).values()) for r in responder.records])
            elif command == "reset":
                responder.reset()
                if hasattr(server, "reset"):  # the threaded server's faults and counts
                    server.reset()
                send(True)
            elif command == "configure":
                server.latency, server.per_token_latency = args
                send(True)
            elif command == "stop":
                send(True)
                return
            else:
                send({"error": f"unknown command {command!r}"})
    finally:
        server.stop()


class ServerProcess:
    """A :class:`~benchmarks.responder.BenchmarkResponder` behind the loopback OpenAI
    server, in a child process.

    Args:
        latency: Seconds per call.
        per_token_latency: Extra seconds per output token.
        forward_words: Words per forward reply.
        feedback_words: Words per gradient.
        server: ``"loop"``, the benchmarks' one-loop server
            (:class:`~benchmarks.loop_server.LoopServer`: replies a fixed latency after
            each arrival, however many arrive together), or ``"threaded"``, the test
            server (:class:`~afnio_langchain.testing.OpenAICompatServer`), whose
            threads take turns at one interpreter lock (the figures before round
            thirteen of ``docs/performance.md``).
        cpus: The CPUs the server process may run on (see
            :mod:`benchmarks.placement`); None leaves it to the scheduler.

    Example:
        >>> import openai
        >>> with ServerProcess() as server:
        ...     client = openai.OpenAI(base_url=server.base_url, api_key="k")
        ...     _ = client.chat.completions.create(
        ...         model="m", messages=[{"role": "user", "content": "hi"}])
        ...     kinds = [r.kind for r in server.records()]
        >>> kinds
        ['forward']
    """

    def __init__(
        self,
        latency: float = 0.0,
        per_token_latency: float = 0.0,
        *,
        forward_words: int = 24,
        feedback_words: int = 16,
        server: str = "loop",
        cpus: Sequence[int] | None = None,
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"server must be one of {SERVERS}, got {server!r}")
        self.latency = latency
        self.per_token_latency = per_token_latency
        self._settings = {
            "latency": latency,
            "per_token_latency": per_token_latency,
            "forward_words": forward_words,
            "feedback_words": feedback_words,
            "server": server,
            "cpus": list(cpus) if cpus else None,
        }
        self.server = server
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self) -> ServerProcess:
        """Start the child process and wait until it serves."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(self._settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(_ROOT),
        )
        self.base_url = self._read()
        return self

    def _read(self) -> Any:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait(10)
            self._process = None
            raise RuntimeError(f"the benchmark server process exited (code {code})")
        return json.loads(line)

    def _ask(self, *command: Any) -> Any:
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("the server is not running: call start() or use `with`")
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        answer = self._read()
        if isinstance(answer, dict) and "error" in answer:
            raise ValueError(answer["error"])
        return answer

    def records(self) -> list[CallRecord]:
        """The calls answered since the last :meth:`reset`, in arrival order."""
        return [CallRecord(*fields) for fields in self._ask("records")]

    def reset(self) -> None:
        """Forget the recorded calls."""
        self._ask("reset")

    def configure(self, latency: float, per_token_latency: float) -> None:
        """Change the latency applied to the next calls."""
        self._ask("configure", latency, per_token_latency)
        self.latency, self.per_token_latency = latency, per_token_latency

    def stop(self) -> None:
        """Stop the server and its process."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(["stop"]) + "\n")
            process.stdin.close()
            process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait(10)
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
