"""The fakes as ordinary LangChain chat models, beyond the standard suites: usage seen by
LangChain's own usage callback and by the package's ``track_usage`` (streamed calls
too), ``stop``, unknown arguments, copying and pickling, forced tool choice, JSON
replies, and the package's own protocols kept (kinds, backward keys)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.models import as_model_client, track_usage
from afnio_langchain.testing import ScriptedChatModel, ToolCallingChatModel

FAKES = [ScriptedChatModel, ToolCallingChatModel]


@tool
def lookup(order_id: int) -> str:
    """Look an order up."""
    return "shipped"


class Order(BaseModel):
    order_id: int
    status: str


@pytest.mark.parametrize("fake", FAKES)
def test_langchains_usage_callback_counts_invoke_and_stream(fake):
    model = fake(forward="It has shipped today.", model_name="fake-1")
    with get_usage_metadata_callback() as callback:
        model.invoke("Where is order 7?")
        "".join(chunk.text for chunk in model.stream("Where is order 7?"))
    usage = callback.usage_metadata["fake-1"]
    assert usage["input_tokens"] == 2 * 4 and usage["output_tokens"] == 2 * 4


@pytest.mark.parametrize("fake", FAKES)
async def test_track_usage_counts_a_streamed_call_through_the_models_client(fake):
    client = as_model_client(fake(forward="It has shipped today.", model_name="fake-2"))
    with track_usage() as usage:
        text = "".join([c async for c in client.astream([{"role": "user", "content": "Order 7?"}])])
    assert text == "It has shipped today."
    counts = usage.by_model()["fake-2"]
    assert (counts.calls, counts.input_tokens, counts.output_tokens) == (1, 2, 4)


def test_a_streamed_chat_completion_runnable_is_counted_by_track_usage():
    model = ScriptedChatModel(forward="Paris is the capital.", model_name="fake-3")
    runnable = ChatCompletionRunnable(model=model, messages=[{"role": "user", "content": "{q}"}])
    with track_usage() as usage:
        streamed = "".join(
            c for c in runnable.stream({"q": "Capital of France?"}) if isinstance(c, str)
        )
    assert streamed == "Paris is the capital."
    counts = usage.by_model()["fake-3"]
    assert (counts.calls, counts.input_tokens, counts.output_tokens) == (1, 3, 4)


@pytest.mark.parametrize("fake", FAKES)
def test_stop_cuts_the_reply_at_the_first_stop_sequence(fake):
    model = fake(forward="Order 7 has shipped. Anything else?")
    assert model.invoke("hi", stop=[".", "?"]).content == "Order 7 has shipped"
    assert "".join(c.text for c in model.stream("hi", stop=["has"])) == "Order 7 "
    assert fake(forward="a b c", stop=["b"]).invoke("hi").content == "a "
    assert model.calls[0].stop == [".", "?"]


@pytest.mark.parametrize("fake", FAKES)
def test_unknown_keyword_arguments_are_refused_by_name(fake):
    model = fake(forward="ok")
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['temprature'\]"):
        model.invoke("hi", temprature=0)
    with pytest.raises(ValueError):  # pydantic: an unknown constructor argument
        fake(forward="ok", temprature=0)
    assert model.invoke("hi", temperature=0, max_tokens=5, seed=1).content == "ok"


@pytest.mark.parametrize("fake", FAKES)
def test_deepcopy_and_pickle_keep_the_script_position_and_the_calls(fake):
    model = fake(forward=["one", "two", "three"])
    model.invoke("hi")
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.invoke("hi").content == "two"
        assert [c.text for c in twin.calls] == ["hi", "hi"]
    assert model.invoke("hi").content == "two"  # the original is independent
    assert len(model.calls) == 2


@pytest.mark.parametrize("fake", FAKES)
def test_a_forced_tool_turns_a_json_reply_into_its_call_and_refuses_text(fake):
    model = fake(forward=['{"order_id": 7}', "It has shipped."])
    reply = model.bind_tools([lookup], tool_choice="lookup").invoke("Where is order 7?")
    assert reply.tool_calls[0]["name"] == "lookup" and reply.tool_calls[0]["args"] == {"order_id": 7}
    with pytest.raises(ValueError, match="forces a tool call"):
        model.bind_tools([lookup], tool_choice="any").invoke("Where is order 7?")


@pytest.mark.parametrize("method", ["function_calling", "json_mode", "json_schema"])
@pytest.mark.parametrize("fake", FAKES)
def test_with_structured_output_parses_every_method(fake, method):
    model = fake(forward='{"order_id": 7, "status": "shipped"}')
    structured = model.with_structured_output(Order, method=method)
    assert structured.invoke("Where is order 7?") == Order(order_id=7, status="shipped")
    as_dict = model.with_structured_output(Order.model_json_schema(), method=method)
    assert as_dict.invoke("Where is order 7?") == {"order_id": 7, "status": "shipped"}
    raw = model.with_structured_output(Order, method=method, include_raw=True).invoke("Order 7?")
    assert raw["parsed"] == Order(order_id=7, status="shipped") and raw["parsing_error"] is None
    sent = model.calls[0].kwargs
    if method == "function_calling":
        assert sent["tool_choice"] == "Order"
    else:
        assert sent["response_format"]["type"] == ("json_object" if method == "json_mode" else "json_schema")


def test_a_json_response_format_refuses_a_reply_that_is_not_json():
    model = ScriptedChatModel(forward="It has shipped.")
    with pytest.raises(ValueError, match="asks for a JSON object"):
        model.with_structured_output(Order, method="json_schema").invoke("Order 7?")
    with pytest.raises(ValueError, match="method must be one of"):
        model.with_structured_output(Order, method="xml")


def test_the_model_name_and_an_override_reach_response_metadata():
    model = ToolCallingChatModel(turns=["hello"], model_name="agent-fake")
    assert model.invoke("hi").response_metadata["model_name"] == "agent-fake"
    assert model.invoke("hi", model="other").response_metadata["model_name"] == "other"
    assert ScriptedChatModel(model="by-alias", forward="x").model_name == "by-alias"


def test_the_packages_protocols_still_hold():
    """DESIGN.md: kinds recorded, backward replies keyed as requested, judge raw."""
    model = ScriptedChatModel(forward="Paris", feedback="Name the country.", judge='{"score": 1}')
    prompt = Variable("Answer briefly.", role="system prompt", requires_grad=True)
    answer = ChatCompletion.apply(
        model, [{"role": "system", "content": [prompt]}, {"role": "user", "content": "Capital?"}],
        backward_model=model,
    )
    answer.backward("Too short.")
    assert prompt.grad[0].data == "Name the country."
    assert [c.kind for c in model.calls] == ["forward", "backward"]
    assert "Too short." in model.calls_of("backward")[0].text
    judge = as_model_client(model).complete([{"role": "user", "content": "x"}], purpose="judge")
    assert json.loads(judge.text) == {"score": 1}


def test_a_script_callable_receives_the_request_text_and_its_details():
    seen = []

    def answer(request):
        seen.append((request.upper(), request.task, request.tool_names, request.kind))
        return "ok"

    ScriptedChatModel(forward=answer).bind_tools([lookup]).invoke([HumanMessage("order 7?")])
    assert seen == [("ORDER 7?", "order 7?", ["lookup"], "forward")]
