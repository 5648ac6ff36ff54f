"""Agent apps written as LangChain's documentation writes them, run as they are and then
tuned through the one documented hook (``TrainablePromptMiddleware`` in ``middleware=``,
or ``TrainablePrompt`` as a LangGraph callable prompt).

The apps follow these LangChain docs pages (Python, LangChain 1.x): "Agents" (the
``get_weather`` quickstart, ``create_agent`` with ``system_prompt``), "Structured output"
(``ContactInfo`` with ``ToolStrategy`` / ``ProviderStrategy`` / a bare schema),
"Middleware" (``@dynamic_prompt`` reading ``request.runtime.context`` with a
``context_schema``, ``@before_model``, ``ModelCallLimitMiddleware``), "Short-term memory"
(``InMemorySaver`` and a ``thread_id``), "Streaming" (``stream_mode="updates"`` and
``"messages"``), and LangGraph's "prompt as a callable" and a hand-built ``StateGraph``.
Only the model is a fake (``ToolCallingChatModel``), scripted with what a model would say.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, TypedDict

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent
from langchain.agents.middleware import (
    ModelCallLimitMiddleware,
    ModelRequest,
    before_model,
    dynamic_prompt,
)
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import AIMessageChunk, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel, Field

from afnio_langchain import Variable, track_usage
from afnio_langchain.agents import (
    FinalAnswerMatch,
    StepCount,
    ToolCallMatch,
    TrainableAgent,
    TrainablePrompt,
    TrainablePromptMiddleware,
    trajectory_of,
)
from afnio_langchain.optim import TGD
from afnio_langchain.testing import AgentTurnRequest, ToolCallingChatModel

SYSTEM_PROMPT = "You are a helpful assistant"


def get_weather(city: str) -> str:
    """Get weather for a given city."""
    return f"It's always sunny in {city}!"


class ContactInfo(BaseModel):
    """Contact information for a person."""

    name: str = Field(description="The name of the person")
    email: str = Field(description="The email address of the person")
    phone: str = Field(description="The phone number of the person")


CONTACT = {"name": "John Doe", "email": "john@example.com", "phone": "(555) 123-4567"}
CONTACT_TASK = "Extract contact info from: John Doe, john@example.com, (555) 123-4567"


def weather_turns(request: AgentTurnRequest) -> Any:
    """What a model says in the quickstart: look the weather up, then report it."""
    if not request.tool_results:
        return {"name": "get_weather", "args": {"city": "sf"}}
    return request.tool_results[-1].content


def fake(turns: Any, **kwargs: Any) -> ToolCallingChatModel:
    return ToolCallingChatModel(
        turns=turns,
        feedback="Say which city the forecast is for.",
        optimizer="You are a helpful assistant. Name the city in every forecast.",
        model_name="fake-gpt",
        **kwargs,
    )


def tune(agent_factory: Any, model: ToolCallingChatModel, prompt_text: str = SYSTEM_PROMPT):
    """The documented hook: the same app, with the middleware added."""
    prompt = Variable(prompt_text, role="system prompt", requires_grad=True)
    middleware = TrainablePromptMiddleware(prompt)
    return TrainableAgent(agent=agent_factory(middleware), prompt=middleware, backward_model=model), prompt


# -- the quickstart ------------------------------------------------------------------------
def test_the_quickstart_agent_runs_as_is_then_tunes_from_its_own_input_shape():
    model = fake(weather_turns)

    def app(*extra: Any):
        return create_agent(model, tools=[get_weather], system_prompt=SYSTEM_PROMPT, middleware=[*extra])

    state = app().invoke({"messages": [{"role": "user", "content": "what is the weather in sf"}]})
    assert state["messages"][-1].content == "It's always sunny in sf!"

    trainable, prompt = tune(app, model)
    answer = trainable.invoke({"messages": [{"role": "user", "content": "what is the weather in sf"}]})
    assert answer.data == "It's always sunny in sf!"
    run = trajectory_of(answer)
    assert [c.name for c in run.tool_calls] == ["get_weather"] and run.stopped == "final_answer"
    assert run.system_prompt == SYSTEM_PROMPT  # what the model received
    example = {"expected_tool_calls": [{"name": "get_weather", "args": {"city": "sf"}}],
               "answer": "sunny in sf"}
    assert ToolCallMatch()(example, answer).score == 1.0
    assert FinalAnswerMatch()(example, answer).score == 1.0

    optimizer = TGD([prompt], model=model)
    answer.backward("Name the city.")
    optimizer.step()
    app().invoke({"messages": [("user", "weather?")]})  # the app itself is unchanged
    trainable.agent.invoke({"messages": [("user", "weather?")]})
    assert model.calls_of("forward")[-1].messages[0].content == prompt.data != SYSTEM_PROMPT
    assert model.calls_of("forward")[-3].messages[0].content == SYSTEM_PROMPT


def test_usage_names_the_agents_model():
    model = fake(weather_turns)
    trainable, _ = tune(lambda m: create_agent(model, [get_weather], middleware=[m]), model)
    with track_usage() as usage:
        trainable.invoke("what is the weather in sf")
    assert set(usage.by_model()) == {"fake-gpt"}
    assert usage.by_model()["fake-gpt"].calls == 2
    assert usage.by_model()["fake-gpt"].input_tokens > 0


# -- structured output -------------------------------------------------------------------
def contact_as_tool(request: AgentTurnRequest) -> Any:
    return {"name": "ContactInfo", "args": CONTACT}


@pytest.mark.parametrize(
    ("response_format", "turns"),
    [
        (ToolStrategy(ContactInfo), contact_as_tool),
        (ProviderStrategy(ContactInfo), json.dumps(CONTACT)),
        (ContactInfo, json.dumps(CONTACT)),  # a bare schema: the provider strategy here
    ],
    ids=["tool-strategy", "provider-strategy", "bare-schema"],
)
def test_a_structured_output_agent_answers_with_its_structured_response(response_format, turns):
    model = fake([turns] if isinstance(turns, str) else turns)

    def app(*extra: Any):
        return create_agent(model, tools=[get_weather], response_format=response_format, middleware=[*extra])

    state = app().invoke({"messages": [{"role": "user", "content": CONTACT_TASK}]})
    assert state["structured_response"] == ContactInfo(**CONTACT)

    trainable, prompt = tune(app, model, "Extract contact details.")
    answer = trainable.invoke({"messages": [{"role": "user", "content": CONTACT_TASK}]})
    assert json.loads(answer.data) == CONTACT
    run = trajectory_of(answer)
    assert run.stopped == "final_answer" and run.tool_calls == []
    assert run.structured_response == ContactInfo(**CONTACT)
    example = {"expected_tool_calls": [], "answer": CONTACT, "max_steps": 1}
    for metric in (ToolCallMatch(), FinalAnswerMatch(), StepCount()):
        assert metric(example, answer).score == 1.0, metric
    assert FinalAnswerMatch()({"answer": "john@example.com"}, answer).score == 1.0
    wrong = FinalAnswerMatch()({"answer": {**CONTACT, "phone": "none"}}, answer)
    assert wrong.score < 1.0 and "phone" in wrong.feedback
    if isinstance(response_format, ToolStrategy):
        assert [c.name for c in run.steps[0].structured_output] == ["ContactInfo"]
        assert "ContactInfo" not in run.tools  # the answer's tool is not one of the agent's

    answer.backward("Good extraction.")
    backward = model.calls_of("backward")[-1].text
    assert 'stopped="final_answer"' in backward and "john@example.com" in backward
    if isinstance(response_format, ToolStrategy):
        assert "this call returned the final answer" in backward


def test_a_structured_response_from_the_final_state_is_scored_the_same():
    model = fake(contact_as_tool)
    agent = create_agent(model, tools=[], response_format=ToolStrategy(ContactInfo))
    state = agent.invoke({"messages": [{"role": "user", "content": CONTACT_TASK}]})
    example = {"expected_tool_calls": [], "answer": CONTACT, "max_steps": 1}
    for metric in (ToolCallMatch(), FinalAnswerMatch(), StepCount()):
        assert metric(example, state).score == 1.0, metric


# -- middleware stacks -------------------------------------------------------------------
class Context(TypedDict):
    user_role: str


@dynamic_prompt
def user_role_prompt(request: ModelRequest) -> str:
    """Generate system prompt based on user role (the docs' example)."""
    user_role = request.runtime.context.get("user_role", "user")
    base_prompt = "You are a helpful assistant."
    if user_role == "expert":
        return f"{base_prompt} Provide detailed technical responses."
    if user_role == "beginner":
        return f"{base_prompt} Explain concepts simply and avoid jargon."
    return base_prompt


seen_counts: list[int] = []


@before_model
def log_before_model(state: Any, runtime: Any) -> None:
    seen_counts.append(len(state["messages"]))
    return None


def test_a_dynamic_prompt_listed_first_composes_with_the_trainable_prompt():
    model = fake(["Machine learning fits models to data."])

    def app(*extra: Any):
        return create_agent(
            model,
            tools=[get_weather],
            middleware=[log_before_model, user_role_prompt, ModelCallLimitMiddleware(run_limit=5), *extra],
            context_schema=Context,
        )

    app().invoke({"messages": [{"role": "user", "content": "Explain machine learning"}]},
                 context={"user_role": "expert"})
    assert model.calls[-1].messages[0].content.endswith("Provide detailed technical responses.")

    trainable, prompt = tune(app, model, "Cite one source.")
    answer = trainable.invoke(
        {"messages": [{"role": "user", "content": "Explain machine learning"}]},
        context={"user_role": "expert"},
    )
    received = model.calls_of("forward")[-1].messages[0].content
    assert received == (
        "Cite one source.\n\nYou are a helpful assistant. Provide detailed technical responses."
    )
    assert trajectory_of(answer).system_prompt == received  # gradients see what was sent
    answer.backward("Too long.")
    assert received in model.calls_of("backward")[-1].text
    by_input = trainable.invoke({"input": "Explain ML", "context": {"user_role": "beginner"}})
    assert trajectory_of(by_input).system_prompt.endswith("avoid jargon.")
    assert seen_counts  # the other middleware ran


def test_a_dynamic_prompt_listed_after_the_trainable_prompt_is_refused_with_the_order_to_use():
    model = fake(["ok"])
    prompt = Variable("Cite one source.", requires_grad=True)
    middleware = TrainablePromptMiddleware(prompt)
    agent = create_agent(model, [get_weather], middleware=[middleware, user_role_prompt],
                         context_schema=Context)
    trainable = TrainableAgent(agent=agent, prompt=middleware, backward_model=model)
    with pytest.raises(RuntimeError, match="List TrainablePromptMiddleware after it"):
        trainable.invoke("Explain machine learning", context={"user_role": "expert"})


def test_an_inner_middleware_that_keeps_the_prompt_is_seen_as_received():
    @dynamic_prompt
    def add_date(request: ModelRequest) -> str:
        return f"{request.system_prompt}\nToday is Monday."

    model = fake(["ok"])
    trainable, _ = tune(lambda m: create_agent(model, [get_weather], middleware=[m, add_date]), model)
    answer = trainable.invoke("What day is it?")
    assert trajectory_of(answer).system_prompt == "You are a helpful assistant\nToday is Monday."
    assert model.calls[-1].messages[0].content == trajectory_of(answer).system_prompt


def test_a_different_static_system_prompt_is_kept_not_dropped():
    model = fake(["ok"])
    trainable, _ = tune(
        lambda m: create_agent(model, [], system_prompt="The user is Ada.", middleware=[m]), model
    )
    trainable.invoke("hi")
    assert model.calls[-1].messages[0].content == "You are a helpful assistant\n\nThe user is Ada."


# -- short-term memory -------------------------------------------------------------------
def remembers_the_name(request: AgentTurnRequest) -> str:
    said = [m.content for m in request.messages if m.type == "human"]
    named = [s.split("name is ")[1].rstrip(".!") for s in said if "name is " in s]
    return f"Your name is {named[-1]}." if "my name" in request.task.lower() and named else "Hi!"


def test_a_checkpointed_thread_keeps_its_memory_when_tuned():
    model = fake(remembers_the_name)

    def app(*extra: Any):
        return create_agent(model, [get_weather], checkpointer=InMemorySaver(), middleware=[*extra])

    agent = app()
    config = {"configurable": {"thread_id": "1"}}
    agent.invoke({"messages": [{"role": "user", "content": "Hi! My name is Bob."}]}, config)
    state = agent.invoke({"messages": [{"role": "user", "content": "What's my name?"}]}, config)
    assert state["messages"][-1].content == "Your name is Bob."

    trainable, _ = tune(app, model)
    trainable.invoke({"messages": [("user", "Hi! My name is Bob.")]}, config)
    answer = trainable.invoke({"messages": [("user", "What's my name?")]}, config)
    assert answer.data == "Your name is Bob."
    assert trajectory_of(answer).task == "What's my name?"
    assert trajectory_of(answer).num_steps == 1  # only this turn, not the thread's past
    fresh = trainable.invoke({"messages": [("user", "What's my name?")]})  # its own thread
    assert fresh.data == "Hi!"
    history = trainable.invoke(
        {"messages": [("user", "My name is Eve."), ("ai", "Hi!"), ("user", "What's my name?")]}
    )
    assert history.data == "Your name is Eve."


# -- streaming ---------------------------------------------------------------------------
def test_the_tuned_app_streams_updates_and_tokens_as_before():
    model = fake(weather_turns)

    def app(*extra: Any):
        return create_agent(model, tools=[get_weather], system_prompt=SYSTEM_PROMPT, middleware=[*extra])

    trainable, _ = tune(app, model)
    question = {"messages": [{"role": "user", "content": "what is the weather in sf"}]}
    for agent in (app(), trainable.agent):
        steps = [step for chunk in agent.stream(question, stream_mode="updates") for step in chunk]
        assert steps == ["model", "tools", "model"]
        tokens = [
            token for token, meta in agent.stream(question, stream_mode="messages")
            if isinstance(token, AIMessageChunk) and meta["langgraph_node"] == "model"
        ]
        assert "".join(t.text for t in tokens) == "It's always sunny in sf!"
        assert any(t.tool_call_chunks for t in tokens)
    assert all(
        isinstance(c.messages[0], SystemMessage) and c.messages[0].content == SYSTEM_PROMPT
        for c in model.calls_of("forward")
    )


# -- LangGraph: a callable prompt --------------------------------------------------------
def test_a_hand_built_langgraph_graph_with_a_callable_prompt_tunes():
    model = fake(["Hello from the graph."])

    def build(prompt: Any):
        def call_model(state: MessagesState):
            return {"messages": [model.invoke(prompt(state))]}

        graph = StateGraph(MessagesState)
        graph.add_node("call_model", call_model)
        graph.add_edge(START, "call_model")
        graph.add_edge("call_model", END)
        return graph.compile()

    plain = build(lambda state: [SystemMessage(SYSTEM_PROMPT), *state["messages"]])
    assert plain.invoke({"messages": [("user", "hi")]})["messages"][-1].content == "Hello from the graph."

    prompt = TrainablePrompt(Variable(SYSTEM_PROMPT, requires_grad=True))
    trainable = TrainableAgent(agent=build(prompt), prompt=prompt, backward_model=model)
    answer = trainable.invoke({"messages": [("user", "hi")]})
    assert answer.data == "Hello from the graph."
    answer.backward("Greet by name.")
    assert prompt.system_prompt.grad[0].data == "Say which city the forecast is for."


def test_langgraphs_prebuilt_agent_with_a_callable_prompt_tunes():
    from langgraph.prebuilt import create_react_agent

    model = fake(weather_turns)
    prompt = TrainablePrompt(Variable(SYSTEM_PROMPT, requires_grad=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        agent = create_react_agent(model, [get_weather], prompt=prompt)
    trainable = TrainableAgent(agent=agent, prompt=prompt, backward_model=model)
    with track_usage() as usage:
        answer = trainable.invoke({"messages": [("user", "what is the weather in sf")]})
    assert answer.data == "It's always sunny in sf!"
    assert list(usage.by_model()) == ["fake-gpt"]
