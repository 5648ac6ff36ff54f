"""LangChain's standard chat-model suites (``langchain_tests``) run against both fakes.

``ChatModelUnitTests`` and ``ChatModelIntegrationTests`` come from the ``langchain-tests``
package, unchanged. A fake needs a script; the one given here (:func:`plays_a_model`) is
what a scripted test would write: it reads the request (its text, bound tools,
``tool_choice``, ``response_format``) and answers as a model would: a tool call with
arguments taken from the user's words when a tool is to be called, a JSON object when
JSON is asked for, text otherwise. Everything the suites check beyond the content
(message and chunk shapes, usage, ``model_name``, tool-call ids and chunks, structured
output parsing, callbacks, ``stop``, model override, batching, events) is the fakes'
own behaviour.

Skipped, and why (each is a capability the fakes do not claim):
- image / audio / PDF inputs and tool messages, Anthropic-format inputs: these tests
  download media over the network (not allowed in this suite) and need a multimodal model;
- ``test_init_from_env``: a fake has no credentials to read from the environment;
- ``test_serdes``: LangChain's ``load`` admits only the classes of its own mapping (even
  with ``allowed_objects="all"``), so no chat model outside langchain's partner packages
  can pass it; like those, the fakes leave ``is_lc_serializable`` False;
- ``test_stream_time``: a VCR benchmark of HTTP traffic (the fakes make none).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.messages import ToolMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from afnio_langchain.testing import ScriptedChatModel, ScriptedRequest, ToolCallingChatModel

_QUOTED = re.compile(r"""'([^']+)'|"([^"]+)\"""")
_INTEGER = re.compile(r"-?\d+")


def _fill(schema: dict[str, Any], words: str) -> dict[str, Any]:
    """Arguments for a JSON schema, taken from the user's words: integers in order,
    a quoted phrase (else the words themselves) for strings."""
    integers = [int(n) for n in _INTEGER.findall(words)]
    quoted = [a or b for a, b in _QUOTED.findall(words)]
    out: dict[str, Any] = {}
    for name, spec in (schema.get("properties") or {}).items():
        kinds = {spec.get("type")} | {s.get("type") for s in spec.get("anyOf", [])}
        if "integer" in kinds or "number" in kinds:
            out[name] = integers.pop(0) if integers else 0
        elif "boolean" in kinds:
            out[name] = True
        elif "array" in kinds:
            out[name] = []
        elif "object" in kinds:
            out[name] = {}
        else:
            out[name] = quoted[0] if quoted else f"{name}: {words}"
    return out


def plays_a_model(request: ScriptedRequest) -> Any:
    """The suites' script: call a tool when one is forced or the user's turn asks for
    one, answer JSON when JSON is asked for, else answer in words."""
    words = request.task
    last = request.messages[-1] if request.messages else None
    forced = request.forced_tool
    if request.tools and forced is not False and (forced or not isinstance(last, ToolMessage)):
        names = request.tool_names
        name = forced if isinstance(forced, str) else names[0]
        schema = next(
            t["function"].get("parameters", {}) for t in request.tools if t["function"]["name"] == name
        )
        return {"name": name, "args": _fill(schema, words)}
    if request.json_schema is not None:
        return json.dumps(_fill(request.json_schema, words), ensure_ascii=False)
    if request.response_format:  # JSON mode: the keys the user asked for
        keys = [a or b for a, b in _QUOTED.findall(words)]
        return json.dumps({key: f"{key} about {words[:40]}" for key in keys})
    if isinstance(last, ToolMessage):
        return f"The tool said: {last.content}"
    return f"You said: {words}" if words else "Hello."


class _ScriptedSuite:
    """What every suite below is told: the fake, its script, and that it has JSON mode
    and a per-call model override (as ordinary provider models do)."""

    fake: type[ScriptedChatModel] = ScriptedChatModel
    script_argument = "forward"

    @property
    def chat_model_class(self) -> type[ScriptedChatModel]:
        return self.fake

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {self.script_argument: plays_a_model, "model_name": f"{self.fake.__name__}-standard"}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "override-model"


class TestScriptedChatModelUnit(_ScriptedSuite, ChatModelUnitTests):
    pass


class TestScriptedChatModelIntegration(_ScriptedSuite, ChatModelIntegrationTests):
    pass


class TestToolCallingChatModelUnit(_ScriptedSuite, ChatModelUnitTests):
    fake = ToolCallingChatModel
    script_argument = "turns"


class TestToolCallingChatModelIntegration(_ScriptedSuite, ChatModelIntegrationTests):
    fake = ToolCallingChatModel
    script_argument = "turns"
