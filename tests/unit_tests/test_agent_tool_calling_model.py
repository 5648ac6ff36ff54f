"""``ToolCallingChatModel``: scripted tool calls per conversation, callables, streaming,
and the package's backward/optimizer/judge calls."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from afnio_langchain.models import as_model_client
from afnio_langchain.testing import AgentTurnRequest, ToolCallingChatModel


@tool
def lookup(order_id: int) -> str:
    """Look an order up."""
    return "shipped"


def conversation(*tool_results: str) -> list:
    messages = [SystemMessage("Be helpful."), HumanMessage("Where is order 7?")]
    for k, result in enumerate(tool_results):
        messages += [
            AIMessage("", tool_calls=[{"name": "lookup", "args": {}, "id": f"c{k}"}]),
            ToolMessage(result, tool_call_id=f"c{k}"),
        ]
    return messages


def test_a_turn_list_is_indexed_per_conversation_and_the_last_repeats():
    model = ToolCallingChatModel(
        turns=[{"name": "lookup", "args": {"order_id": 7}}, {"name": "lookup", "args": {}}, "done"]
    )
    bound = model.bind_tools([lookup])
    first = bound.invoke(conversation())
    assert first.tool_calls[0]["name"] == "lookup" and first.tool_calls[0]["args"] == {"order_id": 7}
    assert first.tool_calls[0]["id"].startswith("call_")
    assert bound.invoke(conversation()).tool_calls[0]["args"] == {"order_id": 7}  # a new run
    assert bound.invoke(conversation("shipped")).tool_calls[0]["args"] == {}
    assert bound.invoke(conversation("x", "y")).content == "done"
    assert bound.invoke(conversation("x", "y", "z")).content == "done"


def test_several_tool_calls_in_one_turn():
    model = ToolCallingChatModel(
        turns=[[{"name": "lookup", "args": {"order_id": 1}}, {"name": "lookup", "args": {"order_id": 2}}]]
    )
    reply = model.bind_tools([lookup]).invoke(conversation())
    assert [c["args"] for c in reply.tool_calls] == [{"order_id": 1}, {"order_id": 2}]
    assert len({c["id"] for c in reply.tool_calls}) == 2


def test_a_callable_sees_the_request():
    seen: list[AgentTurnRequest] = []

    def policy(request: AgentTurnRequest) -> str:
        seen.append(request)
        return "ok"

    model = ToolCallingChatModel(turns=policy)
    model.bind_tools([lookup]).invoke(conversation("shipped"))
    (request,) = seen
    assert request.system_prompt == "Be helpful."
    assert request.task == "Where is order 7?"
    assert request.step == 1
    assert [m.content for m in request.tool_results] == ["shipped"]
    assert request.tool_descriptions == {"lookup": "Look an order up."}


def test_streaming_keeps_tool_calls():
    model = ToolCallingChatModel(turns=[{"name": "lookup", "args": {"order_id": 7}}])
    chunks = list(model.bind_tools([lookup]).stream(conversation()))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.tool_calls[0]["name"] == "lookup"
    assert merged.tool_calls[0]["args"] == {"order_id": 7}


async def test_async_calls_and_usage_metadata():
    model = ToolCallingChatModel(turns=["It has shipped."])
    reply = await model.ainvoke(conversation())
    assert reply.content == "It has shipped."
    assert reply.usage_metadata["output_tokens"] == 3


def test_backward_and_optimizer_calls_are_answered_by_their_scripts():
    model = ToolCallingChatModel(turns=["ok"], feedback="Be specific.", judge="0")
    client = as_model_client(model)
    request = [{"role": "user", "content": 'Reply with only a JSON object with exactly these keys: "var_1".'}]
    assert client.complete(request, purpose="backward").text == '{"var_1": "Be specific."}'
    assert client.complete([{"role": "user", "content": "x"}], purpose="judge").text == "0"
    assert client.complete([{"role": "user", "content": "x"}]).text == "ok"
    assert [c.kind for c in model.calls] == ["backward", "judge", "forward"]


def test_without_turns_forward_calls_use_the_forward_script():
    model = ToolCallingChatModel(forward="plain")
    assert model.invoke("hi").content == "plain"


def test_bad_turns_are_rejected_early():
    with pytest.raises(TypeError, match="non-empty list"):
        ToolCallingChatModel(turns=[])
    with pytest.raises(TypeError, match="turns\\[1\\]"):
        ToolCallingChatModel(turns=["ok", 3])
    with pytest.raises(TypeError, match="tool call must be a dict"):
        ToolCallingChatModel(turns=[["a", "b"]])
    with pytest.raises(TypeError, match="'args' must be a dict"):
        ToolCallingChatModel(turns=[{"name": "x", "args": "y"}])
