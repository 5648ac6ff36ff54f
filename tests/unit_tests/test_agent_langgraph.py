"""``TrainablePrompt``: a LangGraph agent whose prompt is a callable reading a Variable,
trained from its trajectories through ``TrainableAgent``."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

pytest.importorskip("langgraph")

from langchain_core.messages import SystemMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.prebuilt import ToolNode, create_react_agent  # noqa: E402

from afnio_langchain import Variable  # noqa: E402
from afnio_langchain.agents import (
    TrainableAgent,  # noqa: E402
    trajectory_of,  # noqa: E402
)
from afnio_langchain.agents._langgraph import (  # noqa: E402
    TrainablePrompt,
    create_trainable_react_agent,
)
from afnio_langchain.agents._runnable import STEP_LIMIT_ANSWER  # noqa: E402
from afnio_langchain.optim import TGD  # noqa: E402
from afnio_langchain.testing import ToolCallingChatModel  # noqa: E402


@tool
def lookup_order(order_id: str) -> str:
    """Look an order up by its id."""
    if not order_id.startswith("A"):
        raise ValueError(f"unknown order {order_id}")
    return f"order {order_id}: shipped"


def lookup(order_id: str) -> dict[str, Any]:
    return {"name": "lookup_order", "args": {"order_id": order_id}}


def model_for(turns: Any) -> ToolCallingChatModel:
    return ToolCallingChatModel(
        turns=turns, feedback="Ask for ids like A1.", optimizer="Use ids like A1."
    )


def test_a_callable_prompt_makes_a_prebuilt_agent_trainable():
    model = model_for([lookup("1"), lookup("A1"), "Shipped."])
    prompt = Variable("You are a support agent.", role="system prompt", requires_grad=True)
    callable_prompt = TrainablePrompt(prompt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        agent = create_react_agent(
            model, ToolNode([lookup_order], handle_tool_errors=True), prompt=callable_prompt
        )
    trainable = TrainableAgent(agent=agent, prompt=callable_prompt, backward_model=model)
    answer = trainable.invoke({"input": "Where is order 1?"})
    assert answer.data == "Shipped."
    run = trajectory_of(answer)
    assert [(c.args, c.status) for c in run.tool_calls] == [
        ({"order_id": "1"}, "error"),
        ({"order_id": "A1"}, "success"),
    ]
    assert "unknown order 1" in run.tool_calls[0].output
    assert all(
        c.messages[0] == SystemMessage("You are a support agent.") for c in model.calls_of("forward")
    )
    answer.backward("It guessed the id format.")
    assert [g.data for g in prompt.grad] == ["Ask for ids like A1."]
    optimizer = TGD([prompt], model=model)
    optimizer.step()
    trainable.invoke("Where is order A2?")
    assert model.calls_of("forward")[-1].messages[0].content == "Use ids like A1."


def test_the_helper_builds_and_wraps_the_agent_with_a_checkpointer():
    saver = InMemorySaver()
    prompt = Variable("Help.", role="system prompt", requires_grad=True)
    model = model_for([lookup("A1"), "Shipped."])
    trainable = create_trainable_react_agent(
        model, [lookup_order], prompt, backward_model=model, checkpointer=saver
    )
    outputs = trainable.batch(["Where is A1?", "Where is A2?", "Where is A3?"])
    assert [o.data for o in outputs] == ["Shipped."] * 3
    for checkpoint in saver.list(None):
        assert not any(
            isinstance(m, SystemMessage)
            for m in checkpoint.checkpoint["channel_values"].get("messages", [])
        )
        assert "Variable" not in repr(checkpoint.checkpoint)
    outputs[0].backward("ok")
    assert len(prompt.grad) == 1


def test_running_out_of_steps_is_a_step_limit_stop():
    prompt = Variable("Help.", role="system prompt", requires_grad=True)
    model = model_for([lookup("A1")])  # calls the tool forever
    trainable = create_trainable_react_agent(model, [lookup_order], prompt, backward_model=model)
    answer = trainable.invoke("Where is A1?", config={"recursion_limit": 6})
    assert answer.data == STEP_LIMIT_ANSWER
    assert trajectory_of(answer).stopped == "step_limit"
    answer.backward("It never stopped looking the order up.")
    assert 'stopped="step_limit"' in model.calls_of("backward")[0].messages[1].content
