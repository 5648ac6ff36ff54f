"""Adapter: any LangChain ``BaseChatModel`` as a :class:`ModelClient`."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackManager
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig, ensure_config

from afnio_langchain.models._cache import CACHED_PURPOSES
from afnio_langchain.models._protocol import BaseModelClient, Completion, JsonSchema, Message
from afnio_langchain.models._retry import RetryPolicy, refuses_json_mode
from afnio_langchain.models._secrets import (
    known_secrets,
    redact_exception,
    redact_value,
    register_secrets_of,
)

_MESSAGE_TYPES = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
PURPOSE_METADATA_KEY = "afnio_purpose"
_JSON_MODE_REFUSED: set[int] = set()


def to_langchain_messages(messages: Sequence[Message]) -> list[BaseMessage]:
    """Plain ``{"role", "content"}`` dicts to LangChain message objects."""
    return [_MESSAGE_TYPES[m["role"]](content=m["content"]) for m in messages]


def message_text(message: BaseMessage) -> str:
    """The text of a chat model reply, joining text blocks of multi-part content."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


class _RedactErrors(AsyncCallbackHandler):
    """Masks secrets in a failed chat model run before any tracer records it.

    Runs inline and first: providers may echo the API key in an error body, which
    langchain-openai also hands to callbacks as the run's response metadata.
    """

    run_inline = True

    async def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        redact_exception(error)
        response = kwargs.get("response")
        secrets = known_secrets()
        for generations in getattr(response, "generations", None) or []:
            for generation in generations:
                message = getattr(generation, "message", None)
                metadata = getattr(message, "response_metadata", None)
                if isinstance(metadata, dict):
                    metadata.update(redact_value(metadata, secrets))
                info = getattr(generation, "generation_info", None)
                if isinstance(info, dict):
                    info.update(redact_value(info, secrets))


_REDACT_ERRORS = _RedactErrors()


def _with_redaction(config: RunnableConfig) -> RunnableConfig:
    """``config`` whose callbacks start with the secret-masking handler."""
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.handlers = [_REDACT_ERRORS, *manager.handlers]
        config["callbacks"] = manager
    else:
        config["callbacks"] = [_REDACT_ERRORS, *(callbacks or [])]
    return config


def _uncached(model: BaseChatModel) -> BaseChatModel:
    """``model``, or a copy that skips LangChain's LLM cache when one would apply (only
    forward calls are cached: see ``models/_cache.py``)."""
    if model.cache is False or (model.cache is None and get_llm_cache() is None):
        return model
    return model.model_copy(update={"cache": False})


def _speaks_openai_json_mode(model: BaseChatModel) -> bool:
    return type(model).__module__.startswith(("langchain_openai", "langchain_deepseek"))


class LangChainChatModelClient(BaseModelClient):
    """Wraps a LangChain chat model; runs nest in LangChain tracing under the caller.

    Each call carries ``metadata={"afnio_purpose": purpose}`` so callbacks and fakes
    can tell forward, backward, optimizer and judge calls apart. Completion arguments
    (``temperature``, ``max_tokens``...) are bound onto the model for the call.

    Args:
        model: The chat model.
        retry: Retry policy for transient failures.
        json_mode: Ask OpenAI-compatible models for ``response_format=json_object``
            when a JSON reply is needed (``"auto"``: for langchain-openai models).
        max_input_chars: Refuse longer requests before sending (see
            :class:`~afnio_langchain.models.BaseModelClient`).

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> from afnio_langchain.models import LangChainChatModelClient
        >>> client = LangChainChatModelClient(FakeListChatModel(responses=["hi"]))
        >>> client.complete([{"role": "user", "content": "hello"}]).text
        'hi'
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        retry: RetryPolicy | None = None,
        json_mode: bool | str = "auto",
        max_input_chars: int | None = None,
    ) -> None:
        super().__init__(retry=retry, max_input_chars=max_input_chars)
        if not isinstance(model, BaseChatModel):
            raise TypeError(f"expected a LangChain BaseChatModel, got {type(model).__name__}")
        register_secrets_of(model)  # masked in every error this client raises
        self.model = model
        self.model_name = str(
            getattr(model, "model_name", None) or getattr(model, "model", None) or model._llm_type
        )
        wanted = _speaks_openai_json_mode(model) if json_mode == "auto" else bool(json_mode)
        self._json_mode = wanted and id(model) not in _JSON_MODE_REFUSED

    caches_itself = True  # LangChain's LLM cache (set_llm_cache, the model's cache=)

    def _refuse_json_mode(self) -> None:
        # Remembered per model object (not per adapter), forgotten when the model dies.
        self._json_mode = False
        key = id(self.model)
        if key not in _JSON_MODE_REFUSED:
            _JSON_MODE_REFUSED.add(key)
            weakref.finalize(self.model, _JSON_MODE_REFUSED.discard, key)

    async def _agenerate(
        self, messages: Sequence[Message], json_schema: JsonSchema | None, params: dict[str, Any]
    ) -> Completion:
        params = dict(params)
        purpose = params.pop("purpose", "forward")
        config: RunnableConfig = _with_redaction(ensure_config(params.pop("config", None)))
        config["metadata"] = {**config.get("metadata", {}), PURPOSE_METADATA_KEY: purpose}
        use_json_mode = json_schema is not None and self._json_mode
        model = self.model if purpose in CACHED_PURPOSES else _uncached(self.model)
        try:
            reply = await self._invoke(messages, params, use_json_mode, config, model)
        except Exception as exc:
            if not (use_json_mode and refuses_json_mode(exc)):
                raise
            self._refuse_json_mode()  # this endpoint refuses JSON mode: prompt and parse instead
            reply = await self._invoke(messages, params, False, config, model)
        usage = getattr(reply, "usage_metadata", None) or {}
        model_name = (getattr(reply, "response_metadata", None) or {}).get("model_name")
        details = usage.get("input_token_details") or {}
        return Completion(
            text=message_text(reply),
            model=str(model_name or self.model_name),
            input_tokens=int(usage.get("input_tokens", 0) or 0),
            output_tokens=int(usage.get("output_tokens", 0) or 0),
            raw=reply,
            cached_input_tokens=int(details.get("cache_read", 0) or 0),
            # LangChain marks a reply from its LLM cache by zeroing its cost
            # (BaseChatModel._convert_cached_generations).
            from_cache=usage.get("total_cost") == 0,
        )

    async def _astream(
        self, messages: Sequence[Message], params: dict[str, Any]
    ) -> AsyncIterator[tuple[str, Completion | None]]:
        params = dict(params)
        purpose = params.pop("purpose", "forward")
        config: RunnableConfig = _with_redaction(ensure_config(params.pop("config", None)))
        config["metadata"] = {**config.get("metadata", {}), PURPOSE_METADATA_KEY: purpose}
        runnable = self.model.bind(**params) if params else self.model
        merged: BaseMessage | None = None
        async for chunk in runnable.astream(to_langchain_messages(messages), config=config):
            merged = chunk if merged is None else merged + chunk  # type: ignore[operator]
            yield message_text(chunk), None
        usage = (getattr(merged, "usage_metadata", None) or {}) if merged is not None else {}
        yield "", Completion(
            text=message_text(merged) if merged is not None else "",
            model=self.model_name,
            input_tokens=int(usage.get("input_tokens", 0) or 0),
            output_tokens=int(usage.get("output_tokens", 0) or 0),
        )

    async def _invoke(
        self,
        messages: Sequence[Message],
        params: dict[str, Any],
        json_mode: bool,
        config: RunnableConfig,
        model: BaseChatModel | None = None,
    ) -> BaseMessage:
        if json_mode:
            params = {**params, "response_format": {"type": "json_object"}}
        model = self.model if model is None else model
        runnable = model.bind(**params) if params else model
        return await runnable.ainvoke(to_langchain_messages(messages), config=config)
