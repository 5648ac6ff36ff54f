"""``TrainablePromptMiddleware`` + ``TrainableAgent``: an agent built with LangChain's
``create_agent`` gets its prompt from Variables and its prompt learns from trajectories."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import SystemMessage  # noqa: E402
from langchain_core.tools import ToolException, tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from afnio_langchain import Variable, track_usage  # noqa: E402
from afnio_langchain.agents import (
    TrainableAgent,  # noqa: E402
    TrainablePromptMiddleware,  # noqa: E402
    trajectory_of,  # noqa: E402
)
from afnio_langchain.optim import TGD  # noqa: E402
from afnio_langchain.testing import AgentTurnRequest, ToolCallingChatModel  # noqa: E402


@tool
def lookup_order(order_id: str) -> str:
    """Look an order up by its id."""
    if not order_id.startswith("A"):
        raise ToolException(f"unknown order {order_id}")
    return f"order {order_id}: shipped"


lookup_order.handle_tool_error = True


def lookup(order_id: str) -> dict[str, Any]:
    return {"name": "lookup_order", "args": {"order_id": order_id}}


def build(turns: Any, *, descriptions: dict[str, Variable] | None = None, **kwargs: Any):
    model = ToolCallingChatModel(
        turns=turns,
        feedback="Tell the agent to check the id format.",
        optimizer="Look orders up with ids like A1.",
        latency=kwargs.pop("latency", 0.0),
    )
    prompt = Variable("You are a support agent.", role="system prompt", requires_grad=True)
    middleware = TrainablePromptMiddleware(prompt, descriptions)
    agent = create_agent(  # the app's own prompt, which the Variable was made from
        model, [lookup_order], system_prompt="You are a support agent.", middleware=[middleware], **kwargs
    )
    return TrainableAgent(agent=agent, prompt=middleware, backward_model=model), model, prompt


def test_the_prompt_is_read_from_the_variable_at_every_model_call():
    trainable, model, prompt = build([lookup("A1"), "Shipped."])
    trainable.agent.invoke({"messages": [("user", "Where is A1?")]})  # plain use works too
    prompt.data = "You are a careful support agent."
    trainable.agent.invoke({"messages": [("user", "Where is A1?")]})
    system = [c.messages[0] for c in model.calls_of("forward")]
    assert all(isinstance(m, SystemMessage) for m in system)
    assert [m.content for m in system] == ["You are a support agent."] * 2 + [
        "You are a careful support agent."
    ] * 2


def test_backward_reaches_the_prompt_through_the_recorded_trajectory():
    trainable, model, prompt = build([lookup("7"), lookup("A7"), "Order A7 has shipped."])
    answer = trainable.invoke("Where is order 7?")
    assert answer.data == "Order A7 has shipped."
    assert answer.grad_fn.name() == "AgentRunBackward0"
    run = trajectory_of(answer)
    assert run.num_steps == 3 and run.system_prompt == "You are a support agent."
    assert [(c.args, c.status, c.output) for c in run.tool_calls] == [
        ({"order_id": "7"}, "error", "unknown order 7"),
        ({"order_id": "A7"}, "success", "order A7: shipped"),
    ]
    assert run.tools == {"lookup_order": "Look an order up by its id."}
    answer.backward("It tried a malformed id first.")
    assert [g.data for g in prompt.grad] == ["Tell the agent to check the id format."]
    request = model.calls_of("backward")[0].messages[1].content
    assert '<TOOL_RESULT name="lookup_order" status="error">\nunknown order 7' in request
    assert "It tried a malformed id first." in request


def test_tool_descriptions_are_trainable_through_the_middleware():
    description = Variable("Finds orders.", role="tool description", requires_grad=True)
    trainable, model, prompt = build([lookup("A1"), "ok"], descriptions={"lookup_order": description})
    assert trainable.parameters() == [prompt, description]
    answer = trainable.invoke("Where is A1?")
    shown = model.calls_of("forward")[0].kwargs["tools"][0]["function"]["description"]
    assert shown == "Finds orders."
    answer.backward("Mention the id format.")
    assert description.grad[0].data == "Tell the agent to check the id format."


def per_task(request: AgentTurnRequest) -> Any:
    order = request.task.split()[-1]
    return lookup(order) if not request.tool_results else f"{order}: {request.tool_results[-1].content}"


def test_concurrent_runs_keep_their_own_recordings():
    trainable, model, prompt = build(per_task, latency=0.2)
    tasks = [f"Where is A{k}" for k in range(6)]
    outputs = trainable.batch(tasks)
    assert model.max_concurrent_calls == len(tasks), "the runs did not overlap"
    for task, output in zip(tasks, outputs):
        run = trajectory_of(output)
        assert run.task == task
        assert run.tool_calls[0].args == {"order_id": task.split()[-1]}
        assert output.data == f"{task.split()[-1]}: order {task.split()[-1]}: shipped"
    minibatch = trainable.invoke(tasks[:3])
    assert [r.task for r in trajectory_of(minibatch)] == tasks[:3]


def test_variables_never_enter_checkpointed_state():
    saver = InMemorySaver()
    trainable, _, _ = build([lookup("A1"), "Shipped."], checkpointer=saver)
    outputs = trainable.batch(["Where is A1?", "Where is A2?"])  # a thread id is made for each
    assert [o.data for o in outputs] == ["Shipped.", "Shipped."]
    checkpoints = list(saver.list(None))
    assert len({c.config["configurable"]["thread_id"] for c in checkpoints}) == 2
    for checkpoint in checkpoints:
        for message in checkpoint.checkpoint["channel_values"].get("messages", []):
            assert not isinstance(message, SystemMessage)
        assert "Variable" not in repr(checkpoint.checkpoint)
    # A given thread id is kept (the conversation continues on that thread).
    trainable.invoke("Where is A1?", config={"configurable": {"thread_id": "t1"}})
    assert saver.get_tuple({"configurable": {"thread_id": "t1"}}) is not None


def test_a_tgd_step_changes_what_the_agent_is_told():
    trainable, model, prompt = build([lookup("A1"), "Shipped."])
    optimizer = TGD(trainable.parameters(), model=model)
    with track_usage() as usage:
        trainable.invoke("Where is A1?").backward("Check the id format.")
    assert usage.by_purpose()["forward"].calls == 2
    optimizer.step()
    trainable.invoke("Where is A1?")
    assert model.calls_of("forward")[-1].messages[0].content == "Look orders up with ids like A1."


def test_an_agent_without_the_middleware_is_a_clear_error():
    model = ToolCallingChatModel(turns=["hi"])
    middleware = TrainablePromptMiddleware(Variable("x", requires_grad=True))
    agent = create_agent(model, [])  # built without it
    with pytest.raises(RuntimeError, match="never read its trainable prompt"):
        TrainableAgent(agent=agent, prompt=middleware).invoke("hello")
    with pytest.raises(TypeError, match="prompt=..."):
        TrainableAgent(agent=agent, prompt="You are nice.")
    with pytest.raises(TypeError, match="Variable holding one str"):
        TrainablePromptMiddleware("You are nice.")


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in (
        "afnio_langchain.agents._create_agent",
        "afnio_langchain.agents._trainable_agent",
        "afnio_langchain.agents._langgraph",
    ):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, name
