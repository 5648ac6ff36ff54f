"""``ScriptedChatModel``: a deterministic LangChain chat model that speaks the package's
protocols (forward answers, gradients, optimizer proposals, judge verdicts) and behaves
as a standard LangChain chat model (usage, streaming, tools, structured output, ``stop``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal, Union

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from afnio_langchain.models import PURPOSE_METADATA_KEY, message_text, required_keys_in
from afnio_langchain.testing._in_flight import InFlightCount

Script = Union[str, list[Any], Callable[[str], Any], None]
KINDS = ("forward", "backward", "optimizer", "judge")
SCRIPT_FOR_KIND = {"forward": "forward", "backward": "feedback", "optimizer": "optimizer", "judge": "judge"}

Turn = Union[str, Mapping[str, Any], Sequence[Mapping[str, Any]], AIMessage]
"""One scripted reply: a final answer (``str``), one tool call (``{"name": ..., "args":
{...}}``), several tool calls (a list of them), or a ready ``AIMessage``."""

CALL_OPTIONS = frozenset(
    {
        # sampling and request settings chat models commonly take (recorded, not acted on)
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "top_k",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "reasoning_effort",
        "timeout",
        "max_retries",
        "user",
        "api_key",  # a per-call key, as LiteLLM-style clients take (never used)
        "stream",
        "stream_options",
        # acted on: the reply's model name, tools, forced tool choice, JSON replies
        "model",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "strict",
        "response_format",
    }
)
"""The keyword arguments a call may carry; any other is refused with a ``TypeError``."""

STRUCTURED_METHODS = ("function_calling", "json_mode", "json_schema")


class _Lock:
    """A lock that copies and pickles as a fresh lock (so the model can be deep-copied
    and pickled like any pydantic model)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __deepcopy__(self, memo: dict) -> _Lock:
        return _Lock()

    def __reduce__(self) -> tuple:
        return (_Lock, ())


@dataclass
class ScriptedCall:
    """One request received by a :class:`ScriptedChatModel`.

    Attributes:
        kind: ``"forward"``, ``"backward"``, ``"optimizer"`` or ``"judge"``.
        messages: The LangChain messages received.
        kwargs: The call's keyword arguments (bound tools, ``temperature``...).
        stop: The stop sequences in force (None when there were none).

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
    stop: list[str] | None = None

    @property
    def text(self) -> str:
        return "\n".join(message_text(m) for m in self.messages)


def forced_tool(tool_choice: Any, tools: Sequence[Mapping[str, Any]]) -> str | None | bool:
    """What ``tool_choice`` demands: a tool name, ``True`` (some tool), ``False`` (no
    tool), or None (the model chooses)."""
    names = [tool_name(t) for t in tools]
    if tool_choice in (None, "auto"):
        return None
    if tool_choice == "none" or tool_choice is False:
        return False
    if tool_choice in ("any", "required") or tool_choice is True:
        return names[0] if len(names) == 1 else True
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        if isinstance(name, str):
            return name
    raise ValueError(f"unsupported tool_choice {tool_choice!r}")


def tool_name(schema: Mapping[str, Any]) -> str:
    """The name of a bound tool schema (OpenAI format or a bare function schema)."""
    function = schema.get("function", schema)
    return str(function.get("name", "")) if isinstance(function, Mapping) else ""


class ScriptedRequest(str):
    """What a script callable receives: the request's text (it *is* that ``str``, so a
    callable written for text keeps working), with the whole call alongside.

    Attributes:
        messages: The LangChain messages of the call (system prompt included when sent).
        kind: ``"forward"``, ``"backward"``, ``"optimizer"`` or ``"judge"``.
        tools: The tool schemas bound with ``bind_tools`` (OpenAI format).
        tool_choice: The call's ``tool_choice`` (None when it set none).
        response_format: The call's ``response_format`` (JSON mode / JSON schema), or None.
        options: Every keyword argument of the call.

    Example:
        >>> from langchain_core.tools import tool
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> @tool
        ... def lookup(order_id: int) -> str:
        ...     '''Look an order up.'''
        ...     return "shipped"
        >>> def answer(request):
        ...     if request.tools and not request.tool_results:
        ...         return {"name": request.tool_names[0], "args": {"order_id": 7}}
        ...     return f"{request.task} -> {request.tool_results[-1].content}"
        >>> model = ScriptedChatModel(forward=answer).bind_tools([lookup])
        >>> reply = model.invoke("Where is order 7?")
        >>> reply.tool_calls[0]["name"], reply.tool_calls[0]["args"]
        ('lookup', {'order_id': 7})
    """

    messages: list[BaseMessage]
    kind: str
    tools: list[dict[str, Any]]
    tool_choice: Any
    response_format: Any
    options: dict[str, Any]

    def __new__(
        cls,
        messages: Sequence[BaseMessage],
        *,
        kind: str = "forward",
        options: Mapping[str, Any] | None = None,
    ) -> ScriptedRequest:
        request = super().__new__(cls, "\n".join(message_text(m) for m in messages))
        options = dict(options or {})
        request.messages = list(messages)
        request.kind = kind
        request.options = options
        request.tools = list(options.get("tools") or [])
        request.tool_choice = options.get("tool_choice")
        request.response_format = options.get("response_format")
        return request

    def __reduce__(self) -> tuple:
        return (str, (str(self),))

    @property
    def text(self) -> str:
        """The request's text as a plain ``str``."""
        return str(self)

    def _since_task(self) -> list[BaseMessage]:
        for k in range(len(self.messages) - 1, -1, -1):
            if isinstance(self.messages[k], HumanMessage):
                return self.messages[k + 1 :]
        return list(self.messages)

    @property
    def system_prompt(self) -> str:
        """The text of the first system message ('' when there is none)."""
        for message in self.messages:
            if isinstance(message, SystemMessage):
                return message_text(message)
        return ""

    @property
    def task(self) -> str:
        """The text of the last user message ('' when there is none)."""
        for message in reversed(self.messages):
            if isinstance(message, HumanMessage):
                return message_text(message)
        return ""

    @property
    def step(self) -> int:
        """How many model replies the current task already has (0 on its first call)."""
        return sum(isinstance(m, AIMessage) for m in self._since_task())

    @property
    def tool_results(self) -> list[ToolMessage]:
        """The tool messages received since the task."""
        return [m for m in self._since_task() if isinstance(m, ToolMessage)]

    @property
    def tool_names(self) -> list[str]:
        """The names of the bound tools, in order."""
        return [tool_name(t) for t in self.tools]

    @property
    def tool_descriptions(self) -> dict[str, str]:
        """Tool name -> the description the model was shown."""
        out = {}
        for schema in self.tools:
            function = schema.get("function", schema)
            out[str(function.get("name", ""))] = str(function.get("description", ""))
        return out

    @property
    def forced_tool(self) -> str | bool | None:
        """The tool ``tool_choice`` forces: its name, ``True`` (any of several), ``False``
        (none allowed) or None (the model chooses)."""
        return forced_tool(self.tool_choice, self.tools)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema a ``response_format`` of type ``json_schema`` asks for."""
        rf = self.response_format
        if isinstance(rf, Mapping) and rf.get("type") == "json_schema":
            inner = rf.get("json_schema") or {}
            return dict(inner.get("schema") or inner)
        return None


def check_turn(turn: Any, where: str) -> None:
    """Raise a TypeError naming ``where`` unless ``turn`` is a valid :data:`Turn`."""
    if isinstance(turn, (str, AIMessage)):
        return
    calls = [turn] if isinstance(turn, Mapping) else turn
    if not isinstance(calls, Sequence) or not calls:
        raise TypeError(
            f"{where}: a turn must be a str, an AIMessage, a tool call dict "
            f"({{'name': ..., 'args': {{...}}}}) or a non-empty list of them, got {turn!r:.200}"
        )
    for call in calls:
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise TypeError(
                f"{where}: a tool call must be a dict with a str 'name', got {call!r:.200}"
            )
        if not isinstance(call.get("args", {}), Mapping):
            raise TypeError(
                f"{where}: tool call 'args' must be a dict, got {call.get('args')!r:.200}"
            )


class _Player:
    """Plays one script: a fixed reply, replies in turn (cycling), or a callable."""

    def __init__(self, script: Script) -> None:
        self.callable = script if callable(script) else None
        self.items = [] if self.callable else ([script] if isinstance(script, str) else list(script or []))
        self.position = 0

    def __bool__(self) -> bool:
        return self.callable is not None or bool(self.items)

    def next(self, request: ScriptedRequest) -> Any:
        """The next scripted reply (the caller holds the model's lock)."""
        reply = self.items[self.position % len(self.items)]
        self.position += 1
        return reply


def _cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to the first stop sequence (as a provider stops generating there)."""
    cut = len(text)
    for sequence in stop or ():
        if sequence:
            found = text.find(sequence)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


def _parse_json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model for offline tests of forward, backward, optimizer and judge
    calls.

    Each script is a string, a list (used in turn, then again from the start) or a
    callable. ``forward`` answers ordinary calls; ``feedback`` writes every gradient a
    backward call asks for (the reply is the JSON object the package requested, one key
    per Variable); ``optimizer`` gives the new value a TGD step proposes; ``judge`` is
    the judge's raw reply. A callable receives a :class:`ScriptedRequest`: the request's
    text (a ``str``) carrying the messages, bound tools, ``tool_choice`` and
    ``response_format``. A forward reply may also be a tool call
    (``{"name": ..., "args": {...}}``), a list of them, or an ``AIMessage``. The kind of
    a call is read from the run metadata the package sets (``afnio_purpose``); calls
    from elsewhere are ``forward``. ``calls`` records every request in order, and
    ``max_concurrent_calls`` the most that were in progress at once.

    It behaves as a standard LangChain chat model (it passes ``langchain_tests``'
    ``ChatModelUnitTests`` and ``ChatModelIntegrationTests``):

    - replies carry ``usage_metadata`` (words counted as tokens) and ``model_name`` in
      ``response_metadata``, on ``invoke`` and on ``stream`` (the last chunk);
    - ``bind_tools`` and ``with_structured_output`` (``function_calling``,
      ``json_mode``, ``json_schema``) work; a ``tool_choice`` that forces a tool turns a
      JSON-object reply into that tool's call and refuses a plain-text reply, and a JSON
      ``response_format`` refuses a reply that is not a JSON object;
    - ``stop`` cuts the reply at the first stop sequence; ``model=`` names the reply's
      model; keyword arguments outside :data:`CALL_OPTIONS` are refused (TypeError);
    - it deep-copies and pickles (scripts that are callables pickle only if they can).

    Args:
        forward: Replies to forward calls.
        feedback: Gradient texts for backward calls.
        optimizer: Proposed values for optimizer calls.
        judge: Raw replies for judge calls (e.g. ``'{"score": 1, "explanation": "ok"}'``).
        latency: Seconds each call takes (``asyncio.sleep`` in async calls).
        model_name: The name replies carry (alias ``model``); default ``"scripted"``.
        stop: Default stop sequences.
        temperature, max_tokens, timeout, max_retries, api_key, streaming: the standard
            chat model settings; accepted as any chat model does (a fake needs no key).

    Example:
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward=["first", "second"])
        >>> model.invoke("hi").content, model.invoke("hi").content, model.invoke("hi").content
        ('first', 'second', 'first')
        >>> [call.kind for call in model.calls]
        ['forward', 'forward', 'forward']
        >>> slow = ScriptedChatModel(forward="ok", latency=0.1)
        >>> _ = slow.batch(["a", "b", "c"])
        >>> slow.max_concurrent_calls  # the three calls overlapped
        3
        >>> reply = model.invoke("hi", stop=[" "])
        >>> reply.usage_metadata["output_tokens"], reply.response_metadata["model_name"]
        (1, 'scripted')
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    forward: Any = None
    feedback: Any = None
    optimizer: Any = None
    judge: Any = None
    latency: float = 0.0
    model_name: str = Field(default="scripted", alias="model")
    stop: list[str] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None
    max_retries: int | None = None
    api_key: SecretStr | None = None
    streaming: bool = False

    _players: dict[str, _Player] = PrivateAttr(default_factory=dict)
    _calls: list[ScriptedCall] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=_Lock)
    _next_id: int = PrivateAttr(default=1)
    _in_flight: InFlightCount = PrivateAttr(default_factory=InFlightCount)

    def model_post_init(self, __context: Any) -> None:
        for argument in SCRIPT_FOR_KIND.values():
            script = getattr(self, argument)
            if script is None or isinstance(script, str) or callable(script):
                continue
            if not isinstance(script, list):
                raise TypeError(f"{argument} must be a str, a list or a callable")
            if argument == "forward":
                for k, turn in enumerate(script):
                    check_turn(turn, f"forward[{k}]")
            elif not all(isinstance(s, str) for s in script):
                raise TypeError(f"{argument} must be a str, a list of str or a callable")
        self._players = {kind: _Player(getattr(self, arg)) for kind, arg in SCRIPT_FOR_KIND.items()}

    @property
    def _llm_type(self) -> str:
        return "afnio-scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _resolve_model_profile(self) -> Any:
        # Tool calling and native JSON-schema output, as the fake supports both.
        return {"tool_calling": True, "structured_output": True, "tool_choice": True}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "afnio"
        return params

    @property
    def calls(self) -> list[ScriptedCall]:
        """Every request received, in order of arrival."""
        with self._lock:
            return list(self._calls)

    def calls_of(self, kind: str) -> list[ScriptedCall]:
        """The requests of one kind (``"forward"``, ``"backward"``...), in order."""
        return [c for c in self.calls if c.kind == kind]

    @property
    def max_concurrent_calls(self) -> int:
        """The most calls that were in progress at once (waiting out ``latency`` and
        being answered), since the model was made or last :meth:`reset`. With a
        ``latency``, it tells a test whether calls overlapped without timing them."""
        return self._in_flight.peak

    def reset(self) -> None:
        """Forget the recorded calls and the peak of concurrent calls."""
        with self._lock:
            self._calls.clear()
        self._in_flight.reset_peak()

    # -- binding ------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, functions, pydantic models or schema dicts), as
        OpenAI-format schemas; ``tool_choice`` may be ``"auto"``, ``"any"``/``"required"``,
        ``"none"``, a tool name or ``{"type": "function", "function": {"name": ...}}``."""
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        if tool_choice is not None:
            forced_tool(tool_choice, formatted)  # refuses an unsupported choice now
            kwargs["tool_choice"] = tool_choice
        if strict is not None:
            kwargs["strict"] = strict
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable returning replies parsed into ``schema`` (a pydantic class, a
        TypedDict, or a JSON/OpenAI schema dict), by forced tool call
        (``"function_calling"``), JSON mode (``"json_mode"``) or a JSON schema
        ``response_format`` (``"json_schema"``). With ``include_raw`` the output is
        ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.

        Raises:
            ValueError: An unknown ``method`` or keyword argument.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {sorted(kwargs)}")
        if method not in STRUCTURED_METHODS:
            raise ValueError(f"method must be one of {STRUCTURED_METHODS}, got {method!r}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, strict=strict, ls_structured_output_format=trace
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        else:
            if method == "json_mode":
                response_format: dict[str, Any] = {"type": "json_object"}
            else:
                json_schema = convert_to_json_schema(schema)
                response_format = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": json_schema.get("title", "response"),
                        "schema": json_schema,
                        **({"strict": strict} if strict is not None else {}),
                    },
                }
            llm = self.bind(response_format=response_format, ls_structured_output_format=trace)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks(
            [RunnablePassthrough.assign(parsed=lambda _: None)], exception_key="parsing_error"
        )
        return RunnableMap(raw=llm) | parsed

    # -- answering ----------------------------------------------------------------------
    def _check_options(self, kwargs: Mapping[str, Any]) -> None:
        unknown = sorted(k for k in kwargs if k not in CALL_OPTIONS)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown keyword arguments {unknown}; a call may "
                f"pass: {', '.join(sorted(CALL_OPTIONS))}"
            )

    def _record(self, request: ScriptedRequest, stop: list[str] | None) -> None:
        options = {k: v for k, v in request.options.items()}
        with self._lock:
            self._calls.append(ScriptedCall(request.kind, list(request.messages), options, stop))

    def _script_reply(self, request: ScriptedRequest) -> Any:
        """The scripted reply for ``request`` (a str or, for forward calls, a turn)."""
        player = self._players[request.kind]
        if not player:
            raise ValueError(
                f"{type(self).__name__} got a {request.kind} call but no "
                f"`{SCRIPT_FOR_KIND[request.kind]}` script was given"
            )
        keys = required_keys_in(request) if request.kind in ("backward", "optimizer") else None
        if keys:
            return json.dumps({key: self._play(player, request) for key in keys}, ensure_ascii=False)
        return self._play(player, request)

    def _play(self, player: _Player, request: ScriptedRequest) -> Any:
        if player.callable is not None:  # called outside the lock: it may call the model
            return player.callable(request)
        with self._lock:
            return player.next(request)

    def _tool_call_id(self) -> str:
        with self._lock:
            number, self._next_id = self._next_id, self._next_id + 1
        return f"call_{number}"

    def _as_message(self, turn: Any, where: str) -> AIMessage:
        check_turn(turn, where)
        if isinstance(turn, AIMessage):
            return turn
        if isinstance(turn, str):
            return AIMessage(content=turn)
        calls = [turn] if isinstance(turn, Mapping) else list(turn)
        return AIMessage(
            content="",
            tool_calls=[
                {
                    "name": call["name"],
                    "args": dict(call.get("args", {})),
                    "id": call.get("id") or self._tool_call_id(),
                    "type": "tool_call",
                }
                for call in calls
            ],
        )

    def _honour_tool_choice(self, request: ScriptedRequest, reply: AIMessage) -> AIMessage:
        demanded = request.forced_tool
        if demanded is None:
            return reply
        if demanded is False:
            if reply.tool_calls:
                raise ValueError(
                    f"the script called {[c['name'] for c in reply.tool_calls]} but the call "
                    "sets tool_choice='none'"
                )
            return reply
        if not reply.tool_calls:
            args = _parse_json_object(message_text(reply))
            if args is None or demanded is True:
                raise ValueError(
                    f"the call forces a tool call (tool_choice={request.tool_choice!r}, tools "
                    f"{request.tool_names}) but the script answered text {message_text(reply)!r:.200}; "
                    "script a tool call ({'name': ..., 'args': {...}})"
                    + ("" if demanded is True else " or a JSON object of its arguments")
                )
            return AIMessage(
                content="",
                tool_calls=[{"name": demanded, "args": args, "id": self._tool_call_id(), "type": "tool_call"}],
            )
        if isinstance(demanded, str) and reply.tool_calls[0]["name"] != demanded:
            raise ValueError(
                f"the call forces the tool {demanded!r} (tool_choice) but the script called "
                f"{reply.tool_calls[0]['name']!r}"
            )
        return reply

    def _honour_response_format(self, request: ScriptedRequest, reply: AIMessage) -> None:
        rf = request.response_format
        wants_json = isinstance(rf, Mapping) and rf.get("type") in ("json_object", "json_schema")
        wants_json = wants_json or (isinstance(rf, type) and is_basemodel_subclass(rf))
        if wants_json and not reply.tool_calls and _parse_json_object(message_text(reply)) is None:
            raise ValueError(
                f"the call asks for a JSON object (response_format) but the script answered "
                f"{message_text(reply)!r:.200}"
            )

    def _reply(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict
    ) -> AIMessage:
        """Record the call and build its reply: script, tool choice, stop, usage, model."""
        self._check_options(kwargs)
        stop = stop if stop is not None else self.stop
        request = ScriptedRequest(messages, kind=self._kind(run_manager), options=kwargs)
        self._record(request, stop)
        turn = self._script_reply(request)
        if request.kind != "forward" and not isinstance(turn, str):
            turn = str(turn)
        reply = self._as_message(turn, f"the {SCRIPT_FOR_KIND[request.kind]} script's reply")
        reply = self._honour_tool_choice(request, reply)
        self._honour_response_format(request, reply)
        text = _cut_at_stop(message_text(reply), stop)
        if text != message_text(reply):
            reply = reply.model_copy(update={"content": text})
        spoken = text + "".join(json.dumps(c["args"]) for c in reply.tool_calls)
        input_tokens = sum(len(message_text(m).split()) for m in messages)
        output_tokens = len(spoken.split())
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        metadata = {
            **(reply.response_metadata or {}),
            "model_name": str(kwargs.get("model") or self.model_name),
            "finish_reason": "tool_calls" if reply.tool_calls else "stop",
        }
        return reply.model_copy(update={"usage_metadata": usage, "response_metadata": metadata})

    @staticmethod
    def _kind(run_manager: Any) -> str:
        metadata = getattr(run_manager, "metadata", None) or {}
        kind = metadata.get(PURPOSE_METADATA_KEY, "forward")
        return kind if kind in KINDS else "forward"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._in_flight.counting():
            if self.latency:
                time.sleep(self.latency)
            reply = self._reply(messages, stop, run_manager, kwargs)
        return ChatResult(generations=[ChatGeneration(message=reply)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._in_flight.counting():
            if self.latency:
                await asyncio.sleep(self.latency)
            reply = self._reply(messages, stop, run_manager, kwargs)
        return ChatResult(generations=[ChatGeneration(message=reply)])

    @staticmethod
    def _chunks(reply: AIMessage) -> list[ChatGenerationChunk]:
        """The reply as stream chunks: its text word by word; the last chunk carries the
        tool calls, the usage and the response metadata (counted once)."""
        text = message_text(reply)
        words = text.split(" ") if text else []
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        chunks = [AIMessageChunk(content=p) for p in pieces[:-1]]
        chunks.append(
            AIMessageChunk(
                content=pieces[-1] if pieces else "",
                usage_metadata=reply.usage_metadata,
                response_metadata=dict(reply.response_metadata),
                tool_call_chunks=[
                    {
                        "name": c["name"],
                        "args": json.dumps(c["args"], ensure_ascii=False),
                        "id": c["id"],
                        "index": i,
                        "type": "tool_call_chunk",
                    }
                    for i, c in enumerate(reply.tool_calls)
                ],
                chunk_position="last",
            )
        )
        return [ChatGenerationChunk(message=chunk) for chunk in chunks]

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        with self._in_flight.counting():
            if self.latency:
                time.sleep(self.latency)
            reply = self._reply(messages, stop, run_manager, kwargs)
        for chunk in self._chunks(reply):
            if run_manager:
                run_manager.on_llm_new_token(message_text(chunk.message), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        with self._in_flight.counting():
            if self.latency:
                await asyncio.sleep(self.latency)
            reply = self._reply(messages, stop, run_manager, kwargs)
        for chunk in self._chunks(reply):
            if run_manager:
                await run_manager.on_llm_new_token(message_text(chunk.message), chunk=chunk)
            yield chunk


__all__ = [
    "CALL_OPTIONS",
    "ScriptedCall",
    "ScriptedChatModel",
    "ScriptedRequest",
    "Turn",
    "check_turn",
    "forced_tool",
]
