"""``ScriptedChatModel``: a deterministic LangChain chat model that speaks the package's
protocols (forward answers, gradients, optimizer proposals, judge verdicts)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Union

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from afnio_langchain.models import PURPOSE_METADATA_KEY, message_text, required_keys_in

Script = Union[str, list[str], Callable[[str], str], None]
KINDS = ("forward", "backward", "optimizer", "judge")
SCRIPT_FOR_KIND = {"forward": "forward", "backward": "feedback", "optimizer": "optimizer", "judge": "judge"}


@dataclass
class ScriptedCall:
    """One request received by a :class:`ScriptedChatModel`.

    Example:
        >>> from afnio_langchain.models import as_model_client
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="Paris", feedback="Name the country too.")
        >>> _ = model.invoke("Capital of France?", temperature=0)
        >>> client = as_model_client(model)
        >>> _ = client.complete([{"role": "user", "content": "Critique: Paris"}], purpose="backward")
        >>> [(call.kind, call.text) for call in model.calls]
        [('forward', 'Capital of France?'), ('backward', 'Critique: Paris')]
        >>> model.calls[0].kwargs
        {'temperature': 0}
    """

    kind: str
    messages: list[BaseMessage]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(message_text(m) for m in self.messages)


class _Player:
    """Plays one script: a fixed string, strings in turn (cycling), or a callable."""

    def __init__(self, script: Script) -> None:
        self._callable = script if callable(script) else None
        self._cycle = None
        if self._callable is None:
            items = [script] if isinstance(script, str) else list(script or [])
            self._cycle = itertools.cycle(items) if items else None
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return self._callable is not None or self._cycle is not None

    def next(self, request_text: str) -> str:
        if self._callable is not None:
            return str(self._callable(request_text))
        with self._lock:
            return next(self._cycle)  # type: ignore[arg-type]


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model for offline tests of forward, backward, optimizer and judge
    calls.

    Each script is a string, a list of strings (used in turn, then again from the
    start) or a callable taking the request's text. ``forward`` answers ordinary
    calls; ``feedback`` writes every gradient a backward call asks for (the reply is
    the JSON object the package requested, one key per Variable); ``optimizer`` gives
    the new value a TGD step proposes; ``judge`` is the judge's raw reply. The kind of
    a call is read from the run metadata the package sets (``afnio_purpose``); calls
    from elsewhere are ``forward``. ``calls`` records every request in order.

    Args:
        forward: Replies to forward calls.
        feedback: Gradient texts for backward calls.
        optimizer: Proposed values for optimizer calls.
        judge: Raw replies for judge calls (e.g. ``'{"score": 1, "explanation": "ok"}'``).
        latency: Seconds each call takes (``asyncio.sleep`` in async calls).

    Example:
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward=["first", "second"])
        >>> model.invoke("hi").content, model.invoke("hi").content, model.invoke("hi").content
        ('first', 'second', 'first')
        >>> [call.kind for call in model.calls]
        ['forward', 'forward', 'forward']
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    forward: Any = None
    feedback: Any = None
    optimizer: Any = None
    judge: Any = None
    latency: float = 0.0
    model_name: str = Field(default="scripted")

    _players: dict[str, _Player] = PrivateAttr(default_factory=dict)
    _calls: list[ScriptedCall] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, __context: Any) -> None:
        for argument in SCRIPT_FOR_KIND.values():
            script = getattr(self, argument)
            if script is not None and not (
                isinstance(script, str)
                or callable(script)
                or (isinstance(script, list) and all(isinstance(s, str) for s in script))
            ):
                raise TypeError(f"{argument} must be a str, a list of str or a callable")
        self._players = {kind: _Player(getattr(self, arg)) for kind, arg in SCRIPT_FOR_KIND.items()}

    @property
    def _llm_type(self) -> str:
        return "afnio-scripted"

    @property
    def calls(self) -> list[ScriptedCall]:
        """Every request received, in order of arrival."""
        with self._lock:
            return list(self._calls)

    def calls_of(self, kind: str) -> list[ScriptedCall]:
        return [c for c in self.calls if c.kind == kind]

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- answering --------------------------------------------------------------------
    def _reply(self, messages: list[BaseMessage], kind: str, kwargs: dict[str, Any]) -> str:
        call = ScriptedCall(kind, list(messages), dict(kwargs))
        with self._lock:
            self._calls.append(call)
        player = self._players[kind]
        if not player:
            raise ValueError(
                f"ScriptedChatModel got a {kind} call but no `{SCRIPT_FOR_KIND[kind]}` script was given"
            )
        text = call.text
        keys = required_keys_in(text) if kind in ("backward", "optimizer") else None
        if keys:
            return json.dumps({key: player.next(text) for key in keys}, ensure_ascii=False)
        return player.next(text)

    @staticmethod
    def _kind(run_manager: Any) -> str:
        metadata = getattr(run_manager, "metadata", None) or {}
        kind = metadata.get(PURPOSE_METADATA_KEY, "forward")
        return kind if kind in KINDS else "forward"

    def _result(self, messages: list[BaseMessage], text: str) -> ChatResult:
        usage = {
            "input_tokens": sum(len(message_text(m).split()) for m in messages),
            "output_tokens": len(text.split()),
        }
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        message = AIMessage(content=text, usage_metadata=usage)  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency:
            time.sleep(self.latency)
        return self._result(messages, self._reply(messages, self._kind(run_manager), kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._result(messages, self._reply(messages, self._kind(run_manager), kwargs))

    def _chunks(self, text: str) -> list[ChatGenerationChunk]:
        words = text.split(" ")
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        return [ChatGenerationChunk(message=AIMessageChunk(content=p)) for p in pieces]

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.latency:
            time.sleep(self.latency)
        for chunk in self._chunks(self._reply(messages, self._kind(run_manager), kwargs)):
            if run_manager:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.latency:
            await asyncio.sleep(self.latency)
        for chunk in self._chunks(self._reply(messages, self._kind(run_manager), kwargs)):
            if run_manager:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk
