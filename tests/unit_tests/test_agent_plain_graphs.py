"""A plain LangChain agent (``create_agent``, no middleware of ours) handed to the
training API: scored on its answer, its input rows checked, and pointed at the agents
API when asked to train. Found by an audit that wrote the agent from LangChain's docs
(``result["messages"][-1]`` is how they read the answer)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402

from afnio_langchain import make_trainable  # noqa: E402
from afnio_langchain.testing import ToolCallingChatModel  # noqa: E402
from afnio_langchain.train import contains, evaluate  # noqa: E402
from afnio_langchain.train._loading import chain_input_fields  # noqa: E402


def _agent(answer: str = "I think the answer is this one."):
    model = ToolCallingChatModel(turns=[answer])
    return create_agent(model, [], system_prompt="You are a helpful assistant")


def test_an_agent_is_scored_on_its_answer_not_on_its_whole_state():
    # The question holds the target, so scoring the state's text would find it there.
    rows = [{"messages": [("user", "What is the weather in sf?")], "answer": "sf"}]
    result = evaluate(_agent(), rows, contains)
    assert result.items[0].output == "I think the answer is this one."
    assert result.score == 0.0
    assert evaluate(_agent("Sunny in sf."), rows, contains).score == 1.0


def test_the_rows_of_an_agent_are_checked_for_its_messages_field():
    # LangGraph's input schema is a $ref to its state: the row check must read it.
    assert chain_input_fields(_agent()) == ["messages"]


def test_make_trainable_on_an_agent_points_at_the_agents_api():
    with pytest.raises(ValueError, match="TrainablePromptMiddleware for create_agent"):
        make_trainable(_agent())


def test_an_agent_paused_for_human_approval_is_an_error_not_a_step_limit():
    from langchain.agents.middleware import HumanInTheLoopMiddleware
    from langchain_core.tools import tool
    from langgraph.checkpoint.memory import InMemorySaver

    from afnio_langchain import Variable
    from afnio_langchain.agents import TrainableAgent, TrainablePromptMiddleware

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        return f"sent to {to}"

    model = ToolCallingChatModel(turns=[{"name": "send_email", "args": {"to": "bob"}}, "Sent."])
    prompt = TrainablePromptMiddleware(Variable("Sys.", role="system prompt", requires_grad=True))
    approval = HumanInTheLoopMiddleware(interrupt_on={"send_email": True})
    agent = create_agent(
        model, [send_email], checkpointer=InMemorySaver(), middleware=[approval, prompt]
    )
    trainable = TrainableAgent(agent=agent, prompt=prompt, backward_model=model)
    # It used to answer "" with stopped="step_limit", which the backward pass then read
    # as "kept calling tools instead of answering".
    with pytest.raises(RuntimeError, match="paused for input"):
        trainable.invoke("Email bob.", {"configurable": {"thread_id": "t1"}})


def test_a_chain_passing_a_history_through_is_not_read_as_an_agent_state():
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from afnio_langchain.testing import ScriptedChatModel

    prompt = ChatPromptTemplate.from_messages([("system", "Answer."), ("human", "{question}")])
    chain = RunnablePassthrough.assign(
        answer=prompt | ScriptedChatModel(forward="Paris") | StrOutputParser()
    )
    history = [HumanMessage("Hi"), AIMessage("Hello! Ask away.")]
    rows = [{"messages": history, "question": "Capital of France?", "answer": "Paris"}]
    # Its output has a "messages" key too; its text is the whole output, not the history.
    assert evaluate(chain, rows, contains).score == 1.0
    assert evaluate(make_trainable(chain), rows, contains).score == 1.0
