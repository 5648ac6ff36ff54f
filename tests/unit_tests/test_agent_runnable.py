"""``AgentRunnable``: the tool loop, tool errors, the step limit, concurrent runs, and
gradients written from the trajectory reaching the system prompt and tool descriptions."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import SystemMessage, ToolMessage
from langchain_core.tools import tool

from afnio_langchain import Variable, no_grad, parameters, track_usage
from afnio_langchain.agents._runnable import (
    STEP_LIMIT_ANSWER,
    AgentRunnable,
    AgentStepLimitError,
    trajectory_of,
)
from afnio_langchain.optim import TGD
from afnio_langchain.testing import AgentTurnRequest, ToolCallingChatModel


@tool
def lookup_order(order_id: str) -> str:
    """Look an order up by its id."""
    if order_id != "A1":
        raise ValueError(f"unknown order {order_id}")
    return "order A1: shipped, tracking TRK-9"


@tool
def track_parcel(tracking_number: str) -> str:
    """Expected delivery date of a parcel."""
    return f"{tracking_number}: arrives May 3"


def lookup(order_id: str) -> dict[str, Any]:
    return {"name": "lookup_order", "args": {"order_id": order_id}}


def make_agent(turns: Any, **kwargs: Any) -> tuple[AgentRunnable, ToolCallingChatModel, Variable]:
    model = ToolCallingChatModel(
        turns=turns, feedback=kwargs.pop("feedback", "Make the agent look orders up first.")
    )
    prompt = Variable("You are a support agent.", role="system prompt", requires_grad=True)
    agent = AgentRunnable(
        model=model,
        tools=kwargs.pop("tools", [lookup_order, track_parcel]),
        system_prompt=prompt,
        backward_model=model,
        **kwargs,
    )
    return agent, model, prompt


def test_the_loop_runs_tools_and_records_the_trajectory():
    agent, model, _ = make_agent(
        [
            lookup("A1"),
            {"name": "track_parcel", "args": {"tracking_number": "TRK-9"}},
            "It arrives on May 3.",
        ]
    )
    answer = agent.invoke({"input": "When does order A1 arrive?"})
    assert answer.data == "It arrives on May 3."
    assert answer.grad_fn.name() == "AgentRunBackward0"
    run = trajectory_of(answer)
    assert run.num_steps == 3 and run.stopped == "final_answer" and run.max_steps == 10
    assert [(c.name, c.args, c.status) for c in run.tool_calls] == [
        ("lookup_order", {"order_id": "A1"}, "success"),
        ("track_parcel", {"tracking_number": "TRK-9"}, "success"),
    ]
    assert run.tool_calls[1].output == "TRK-9: arrives May 3"
    assert run.system_prompt == "You are a support agent."
    assert run.tools["lookup_order"] == "Look an order up by its id."
    # The model saw the system prompt, the task, and each tool's result.
    calls = model.calls_of("forward")
    assert len(calls) == 3
    first, last = calls[0].messages, calls[2].messages
    assert isinstance(first[0], SystemMessage) and first[0].content == "You are a support agent."
    assert [type(m).__name__ for m in last] == [
        "SystemMessage",
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
        "ToolMessage",
    ]
    assert [t["function"]["name"] for t in calls[0].kwargs["tools"]] == [
        "lookup_order",
        "track_parcel",
    ]


def test_a_tool_error_is_fed_back_to_the_model_as_langchain_does():
    agent, model, _ = make_agent([lookup("a1"), lookup("A1"), "Shipped."])
    answer = agent.invoke("Where is order A1?")
    error_message = model.calls_of("forward")[1].messages[-1]
    assert isinstance(error_message, ToolMessage) and error_message.status == "error"
    assert error_message.content == "Error: ValueError('unknown order a1')\n Please fix your mistakes."
    run = trajectory_of(answer)
    assert [c.status for c in run.tool_calls] == ["error", "success"]
    assert run.errors[0].args == {"order_id": "a1"}


def test_an_unknown_tool_is_reported_to_the_model():
    agent, model, _ = make_agent([{"name": "refund", "args": {}}, "Sorry."])
    run = trajectory_of(agent.invoke("Refund A1"))
    assert run.tool_calls[0].status == "error"
    assert run.tool_calls[0].output == (
        "Error: refund is not a valid tool, try one of [lookup_order, track_parcel]."
    )


def test_tool_error_handling_options():
    agent, _, _ = make_agent([lookup("zz"), "done"], handle_tool_errors=False)
    with pytest.raises(ValueError, match="unknown order zz"):
        agent.invoke("Where is zz?")
    agent, _, _ = make_agent([lookup("zz"), "done"], handle_tool_errors="That failed.")
    assert trajectory_of(agent.invoke("Where is zz?")).tool_calls[0].output == "That failed."
    agent, _, _ = make_agent(
        [lookup("zz"), "done"], handle_tool_errors=lambda exc: f"custom: {exc}"
    )
    assert trajectory_of(agent.invoke("x")).tool_calls[0].output == "custom: unknown order zz"


def test_the_step_limit_stops_the_run_and_the_backward_request_says_so():
    agent, model, prompt = make_agent([lookup("A1")], max_steps=3)
    answer = agent.invoke("Where is order A1?")
    assert answer.data == STEP_LIMIT_ANSWER
    run = trajectory_of(answer)
    assert run.num_steps == 3 and run.stopped == "step_limit"
    assert [c.status for c in run.tool_calls] == ["success", "success", "not_run"]
    assert len(model.calls_of("forward")) == 3  # the limit counts model calls
    answer.backward("It looped on the same lookup.")
    request = model.calls_of("backward")[0].messages[1].content
    assert 'steps="3" step_limit="3" stopped="step_limit"' in request
    assert prompt.grad[0].data == "Make the agent look orders up first."


def test_the_step_limit_can_raise():
    agent, _, _ = make_agent([lookup("A1")], max_steps=2, on_step_limit="raise")
    with pytest.raises(AgentStepLimitError, match="step limit") as caught:
        agent.invoke("Where is order A1?")
    assert caught.value.trajectory.num_steps == 2


def test_gradients_reach_the_prompt_and_tool_descriptions_and_see_the_trajectory():
    agent, model, prompt = make_agent(
        [lookup("a1"), lookup("A1"), "Order A1 has shipped."], train_tool_descriptions=True
    )
    description = agent.tool_descriptions["lookup_order"]
    assert description.data == "Look an order up by its id." and description.requires_grad
    assert agent.parameters() == [prompt, description, agent.tool_descriptions["track_parcel"]]
    assert parameters(agent) == agent.parameters()
    answer = agent.invoke("Where is order A1?")
    answer.backward("It should not guess a lowercase id first.")
    assert [g.data for g in prompt.grad] == ["Make the agent look orders up first."]
    assert description.grad[0].role == "feedback to description of the tool 'lookup_order'"
    (call,) = model.calls_of("backward")
    request = call.messages[1].content
    for expected in (
        "<TASK>\nWhere is order A1?\n</TASK>",
        '<TRAJECTORY steps="3" step_limit="10" stopped="final_answer">',
        '<TOOL_CALL name="lookup_order">{"order_id": "a1"}</TOOL_CALL>',
        '<TOOL_RESULT name="lookup_order" status="error">',
        "ValueError('unknown order a1')",
        "order A1: shipped, tracking TRK-9",
        "<FINAL_ANSWER",
        "It should not guess a lowercase id first.",
        '<VARIABLE key="var_1" role="system prompt">',
        '<VARIABLE key="var_2" role="description of the tool \'lookup_order\'">',
    ):
        assert expected in request, expected
    assert call.kwargs.get("response_format") is None  # a fake takes the keys from the text


def test_trainable_tool_descriptions_are_what_the_model_is_shown():
    description = Variable("Finds orders.", role="tool description", requires_grad=True)
    agent, model, _ = make_agent(["ok"], tool_descriptions={"lookup_order": description})
    agent.invoke("hi")
    description.data = "Look up an order; ids look like A100."
    agent.invoke("hi")
    shown = [
        {t["function"]["name"]: t["function"]["description"] for t in c.kwargs["tools"]}
        for c in model.calls_of("forward")
    ]
    assert shown[0]["lookup_order"] == "Finds orders."
    assert shown[1]["lookup_order"] == "Look up an order; ids look like A100."
    assert shown[1]["track_parcel"] == "Expected delivery date of a parcel."


def per_task(request: AgentTurnRequest) -> Any:
    order = request.task.split()[-1].rstrip("?")
    if not request.tool_results:
        return lookup(order)
    return f"{order}: {request.tool_results[-1].content}"


def test_batch_runs_tasks_concurrently_each_with_its_own_trajectory():
    model = ToolCallingChatModel(turns=per_task, latency=0.2)
    agent = AgentRunnable(model=model, tools=[lookup_order], system_prompt="Help.")
    tasks = [f"Where is order X{k}?" for k in range(6)] + ["Where is order A1?"]
    outputs = agent.batch(tasks)
    assert len(model.calls) == len(tasks) * 2
    assert model.max_concurrent_calls == len(tasks), "the tasks did not run side by side"
    for task, output in zip(tasks, outputs):
        order = task.split()[-1].rstrip("?")
        run = trajectory_of(output)
        assert run.task == task and run.tool_calls[0].args == {"order_id": order}
    assert outputs[-1].data == "A1: order A1: shipped, tracking TRK-9"
    assert trajectory_of(outputs[0]).tool_calls[0].status == "error"


async def test_abatch_honours_max_concurrency():
    model = ToolCallingChatModel(turns=["done"], latency=0.2)
    agent = AgentRunnable(model=model, tools=[], system_prompt="Help.")
    outputs = await agent.abatch(["a", "b", "c", "d"], config={"max_concurrency": 2})
    assert [o.data for o in outputs] == ["done"] * 4
    assert len(model.calls) == 4 and model.max_concurrent_calls == 2


def test_a_list_of_tasks_is_one_minibatch_and_items_without_feedback_cost_nothing():
    agent, model, prompt = make_agent(per_task, tools=[lookup_order])
    answer = agent.invoke(["Where is order A1?", "Where is order B2?"])
    assert answer.data == [
        "A1: order A1: shipped, tracking TRK-9",
        "B2: Error: ValueError('unknown order B2')\n Please fix your mistakes.",
    ]
    runs = trajectory_of(answer)
    assert [r.task for r in runs] == ["Where is order A1?", "Where is order B2?"]
    answer.backward(["", "It should say the order does not exist."])
    assert len(model.calls_of("backward")) == 1
    assert "unknown order B2" in model.calls_of("backward")[0].messages[1].content
    assert len(prompt.grad) == 1


async def test_ainvoke_and_async_backward():
    agent, model, prompt = make_agent([lookup("A1"), "Shipped."])
    answer = await agent.ainvoke("Where is A1?")
    await answer.abackward("Say when it arrives.")
    assert answer.data == "Shipped." and len(prompt.grad) == 1


def test_a_tgd_step_rewrites_the_prompt_from_trajectory_feedback():
    model = ToolCallingChatModel(
        turns=lambda r: lookup("A1") if "look" in r.system_prompt and not r.tool_results else "ok",
        feedback="Tell the agent to call lookup_order before answering.",
        optimizer="You are a support agent. Always look the order up first.",
    )
    prompt = Variable("You are a support agent.", role="system prompt", requires_grad=True)
    agent = AgentRunnable(
        model=model, tools=[lookup_order], system_prompt=prompt, backward_model=model
    )
    optimizer = TGD(agent.parameters(), model=model)
    before = agent.invoke("Where is order A1?")
    assert trajectory_of(before).tool_calls == []
    before.backward("It answered without checking the order.")
    optimizer.step()
    assert prompt.data == "You are a support agent. Always look the order up first."
    optimizer_request = model.calls_of("optimizer")[0].text
    assert "Tell the agent to call lookup_order before answering." in optimizer_request
    after = agent.invoke("Where is order A1?")
    assert [c.name for c in trajectory_of(after).tool_calls] == ["lookup_order"]


def test_model_calls_are_counted_as_forward_and_backward():
    agent, _, _ = make_agent([lookup("A1"), "Shipped."])
    with track_usage() as usage:
        agent.invoke("Where is A1?").backward("Too short.")
    counts = usage.by_purpose()
    assert counts["forward"].calls == 2 and counts["backward"].calls == 1
    assert counts["forward"].input_tokens > 0


class Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.runs: list[tuple[str, UUID, UUID | None]] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kw):
        self.runs.append(("chain:" + str(kw.get("name")), run_id, parent_run_id))

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kw):
        self.runs.append(("chat_model", run_id, parent_run_id))

    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, **kw):
        self.runs.append(("tool:" + str(serialized.get("name")), run_id, parent_run_id))


def test_model_and_tool_runs_nest_under_the_agent_run():
    agent, _, _ = make_agent([lookup("A1"), "Shipped."])
    handler = Runs()
    agent.invoke("Where is A1?", config={"callbacks": [handler], "run_name": "support"})
    (root,) = [r for r in handler.runs if r[0] == "chain:support"]
    assert root[2] is None
    children = [r for r in handler.runs if r[2] == root[1]]
    assert [r[0] for r in children] == ["chat_model", "tool:lookup_order", "chat_model"]


def test_without_grad_there_is_no_node_but_the_trajectory_is_kept():
    agent, _, _ = make_agent([lookup("A1"), "Shipped."])
    with no_grad():
        answer = agent.invoke("Where is A1?")
    assert answer.grad_fn is None
    assert trajectory_of(answer).num_steps == 2


def test_invalid_configuration_and_inputs_are_clear_errors():
    model = ToolCallingChatModel(turns=["ok"])
    with pytest.raises(TypeError, match="needs model"):
        AgentRunnable(tools=[lookup_order])
    with pytest.raises(ValueError, match="not among the tools"):
        AgentRunnable(model=model, tools=[lookup_order], tool_descriptions={"x": Variable("d")})
    with pytest.raises(ValueError, match="max_steps"):
        AgentRunnable(model=model, tools=[lookup_order], max_steps=0)
    with pytest.raises(ValueError, match="unique"):
        AgentRunnable(model=model, tools=[lookup_order, lookup_order])
    with pytest.raises(TypeError, match="LangChain tool"):
        AgentRunnable(model=model, tools=["lookup_order"])
    with pytest.raises(TypeError, match="bind_tools"):
        AgentRunnable(model=object(), tools=[lookup_order])
    agent = AgentRunnable(model=model, tools=[lookup_order])
    with pytest.raises(TypeError, match="takes a task"):
        agent.invoke(42)
    with pytest.raises(KeyError, match="'input'"):
        agent.invoke({"question": "hi"})
    with pytest.raises(ValueError, match="not produced by an agent run"):
        trajectory_of(Variable("x"))


def test_plain_functions_become_tools_and_sync_batch_in_a_running_loop():
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    model = ToolCallingChatModel(turns=[{"name": "add", "args": {"a": 2, "b": 3}}, "5"])
    agent = AgentRunnable(model=model, tools=[add], system_prompt="Compute.")

    async def inside_a_loop() -> list[Variable]:
        return agent.batch(["2+3?", "2+3 again?"])

    outputs = asyncio.run(inside_a_loop())
    assert [o.data for o in outputs] == ["5", "5"]
    assert trajectory_of(outputs[0]).tool_calls[0].output == "5"


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in (
        "afnio_langchain.agents._runnable",
        "afnio_langchain.agents._op",
        "afnio_langchain.agents._trajectory",
        "afnio_langchain.testing._tool_calling_chat_model",
        "afnio_langchain.agents._recording",
        "afnio_langchain.agents._metrics",
    ):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, name


def test_the_agents_extra_is_optional(monkeypatch):
    import importlib
    import sys

    import afnio_langchain.agents as integrations
    from afnio_langchain.agents import _langgraph as langgraph_face

    assert integrations.TrainableAgent  # needs langchain-core only
    monkeypatch.setitem(sys.modules, "langchain.agents.middleware", None)
    monkeypatch.delitem(sys.modules, "afnio_langchain.agents._create_agent", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'afnio-langchain\[agents\]'"):
        importlib.import_module("afnio_langchain.agents._create_agent")
    monkeypatch.setitem(sys.modules, "langgraph.prebuilt", None)
    with pytest.raises(ImportError, match=r"pip install 'afnio-langchain\[agents\]'"):
        langgraph_face.create_trainable_react_agent(
            ToolCallingChatModel(turns=["x"]), [], Variable("p", requires_grad=True)
        )
