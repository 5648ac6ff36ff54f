"""Trajectory metrics: tool-call correctness, step count, final answer, the trajectory
judge, their combination, and training an agent with them through ``Trainer``."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from afnio_langchain import Variable
from afnio_langchain.agents import (
    AgentRunnable,
    FinalAnswerMatch,
    StepCount,
    ToolCallMatch,
    TrajectoryJudge,
    TrajectoryMetrics,
    as_trajectory,
)
from afnio_langchain.agents._trajectory import Trajectory, trajectory_from_messages
from afnio_langchain.testing import ScriptedChatModel, ToolCallingChatModel
from afnio_langchain.train import MetricResult, Trainer


def run(*calls: tuple[str, dict[str, Any]], answer: str = "Done.", error: bool = False) -> Trajectory:
    messages: list = []
    for k, (name, args) in enumerate(calls):
        messages.append(AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"c{k}"}]))
        messages.append(
            ToolMessage("boom" if error else "ok", tool_call_id=f"c{k}", status="error" if error else "success")
        )
    messages.append(AIMessage(answer))
    return trajectory_from_messages("task", messages)


EXPECTED = {
    "expected_tool_calls": [
        {"name": "lookup_order", "args": {"order_id": "A1"}},
        {"name": "open_refund", "args": {"order_id": "A1"}},
    ]
}


def test_tool_call_match_scores_and_explains():
    metric = ToolCallMatch()
    perfect = run(("lookup_order", {"order_id": "a1 "}), ("open_refund", {"order_id": "A1", "reason": "x"}))
    assert metric(EXPECTED, perfect) == MetricResult(1.0)
    wrong = run(("lookup_order", {"order_id": "B7"}), ("track_parcel", {"tracking_number": "T"}))
    result = metric(EXPECTED, wrong)
    assert result.score == pytest.approx(0.0)
    assert result.feedback == (
        'The agent should have called the tool lookup_order with arguments {"order_id": "A1"}, '
        'but called it with {"order_id": "B7"}. '
        'The agent never called the tool open_refund with arguments {"order_id": "A1"}, which '
        "this task needs. "
        'The agent made a tool call this task does not need: track_parcel with arguments '
        '{"tracking_number": "T"}.'
    )
    half = run(("lookup_order", {"order_id": "A1"}))
    assert metric(EXPECTED, half).score == 0.5
    repeated = run(*[("lookup_order", {"order_id": "A1"})] * 3, ("open_refund", {"order_id": "A1"}))
    result = metric(EXPECTED, repeated)
    assert result.score == pytest.approx(2 / 4)
    assert result.feedback.endswith('{"order_id": "A1"} (2 times).')
    assert ToolCallMatch(penalize_extra=False)(EXPECTED, repeated).score == 1.0


def test_tool_call_match_modes():
    numeric = {"expected_tool_calls": [{"name": "add", "args": {"a": 2}}]}
    assert ToolCallMatch()(numeric, run(("add", {"a": "2", "b": 3}))).score == 1.0
    assert ToolCallMatch(args="exact")(numeric, run(("add", {"a": 2, "b": 3}))).score == 0.0
    assert ToolCallMatch(args="ignore")(numeric, run(("add", {"a": 9}))).score == 1.0
    names = {"expected_tool_calls": ["lookup_order", "open_refund"]}
    backwards = run(("open_refund", {}), ("lookup_order", {}))
    assert ToolCallMatch()(names, backwards).score == 1.0
    ordered = ToolCallMatch(ordered=True)(names, backwards)
    assert ordered.score < 1.0
    assert "should come in this order: lookup_order, open_refund" in ordered.feedback
    none = ToolCallMatch()({"expected_tool_calls": []}, run(("lookup_order", {})))
    assert none.score == 0.0 and "needs no tool call" in none.feedback
    assert ToolCallMatch()({"expected_tool_calls": []}, run()).score == 1.0


def test_tool_call_match_errors():
    with pytest.raises(KeyError, match="expected_tool_calls"):
        ToolCallMatch()({"answer": "x"}, run())
    with pytest.raises(TypeError, match="must be a list"):
        ToolCallMatch()({"expected_tool_calls": "lookup"}, run())
    with pytest.raises(ValueError, match="args must be one of"):
        ToolCallMatch(args="fuzzy")


def test_step_count():
    three = run(("a", {}), ("b", {}))
    assert StepCount(3)({}, three).score == 1.0
    result = StepCount(3)({"max_steps": 2}, three)
    assert result.score == pytest.approx(2 / 3)
    assert "took 3 steps" in result.feedback and "at most 2" in result.feedback
    stuck = trajectory_from_messages(
        "t", [AIMessage("", tool_calls=[{"name": "a", "args": {}, "id": "1"}])], max_steps=1
    )
    assert stuck.stopped == "step_limit"
    assert StepCount(5)({}, stuck) == MetricResult(0.0, StepCount(5)({}, stuck).feedback)
    assert "all 1 of its steps" in StepCount(5)({}, stuck).feedback
    with pytest.raises(KeyError, match="step budget"):
        StepCount()({}, three)


def test_final_answer_match():
    assert FinalAnswerMatch()({"answer": "May 3"}, run(answer="It arrives May 3.")).score == 1.0
    result = FinalAnswerMatch(mode="exact")({"answer": "May 3"}, run(answer="It arrives May 3."))
    assert result.score == 0.0 and "May 3" in result.feedback


def test_trajectory_judge_sees_the_whole_run():
    judge_model = ScriptedChatModel(judge='{"score": "7/10", "explanation": "It ignored the error."}')
    judge = TrajectoryJudge(judge_model, criteria="Recover from tool errors.")
    result = judge({"input": "task", "answer": "Refund R-1"}, run(("lookup_order", {"order_id": "A1"}), error=True))
    assert result == MetricResult(0.7, "It ignored the error.")
    (call,) = judge_model.calls
    assert call.kind == "judge"
    text = call.text
    for expected in (
        "<CRITERIA>\nRecover from tool errors.\n</CRITERIA>",
        '<TOOL_CALL name="lookup_order">{"order_id": "A1"}</TOOL_CALL>',
        'status="error"',
        "<REFERENCE_ANSWER>\nRefund R-1\n</REFERENCE_ANSWER>",
        '"score", "explanation"',
    ):
        assert expected in text, expected
    perfect = TrajectoryJudge(ScriptedChatModel(judge='{"score": 1, "explanation": "Fine."}'))
    assert perfect({}, run()) == MetricResult(1.0)


def test_combined_metrics_average_and_label_feedback():
    judge = TrajectoryJudge(ScriptedChatModel(judge='{"score": 0.5, "explanation": "Slow."}'))
    metric = TrajectoryMetrics([ToolCallMatch(), judge], weights=[3, 1])
    result = metric(EXPECTED | {"answer": "x"}, run(("lookup_order", {"order_id": "A1"})))
    assert result.score == pytest.approx((3 * 0.5 + 0.5) / 4)
    lines = result.feedback.splitlines()
    assert lines[0].startswith("[tool_calls] The agent never called the tool open_refund")
    assert lines[1] == "[trajectory_judge] Slow."
    with pytest.raises(ValueError, match="one non-negative number per metric"):
        TrajectoryMetrics([judge], weights=[1, 2])


def test_predictions_may_be_output_variables_or_agent_states():
    state = {
        "messages": [
            HumanMessage("old"),
            AIMessage("old answer"),
            HumanMessage("Where is A1?"),
            AIMessage("", tool_calls=[{"name": "lookup_order", "args": {"order_id": "A1"}, "id": "1"}]),
            ToolMessage("shipped", tool_call_id="1"),
            AIMessage("Shipped."),
        ]
    }
    trajectory = as_trajectory(state)
    assert trajectory.task == "Where is A1?" and trajectory.num_steps == 2
    model = ToolCallingChatModel(turns=["hello"])
    agent = AgentRunnable(model=model, tools=[], system_prompt="Hi.")
    assert as_trajectory(agent.invoke("hi")).final_answer == "hello"
    with pytest.raises(TypeError, match="minibatch"):
        as_trajectory(agent.invoke(["a", "b"]))
    with pytest.raises(TypeError, match="Trajectory"):
        as_trajectory(42)


@tool
def lookup_order(order_id: str) -> str:
    """Look an order up by its id."""
    return f"order {order_id}: shipped"


def test_trainer_tunes_an_agent_prompt_from_trajectory_metrics():
    def agent_turn(request: Any) -> Any:
        if "lookup_order" in request.system_prompt and not request.tool_results:
            return {"name": "lookup_order", "args": {"order_id": request.task.split()[-1]}}
        return request.tool_results[-1].content if request.tool_results else "No idea."

    model = ToolCallingChatModel(
        turns=agent_turn,
        feedback="Require a lookup_order call before answering.",
        optimizer="Always call lookup_order with the order id before answering.",
    )
    prompt = Variable("You help customers.", role="system prompt", requires_grad=True)
    agent = AgentRunnable(model=model, tools=[lookup_order], system_prompt=prompt)
    data = [
        {"input": f"Where is order A{k}", "expected_tool_calls": ["lookup_order"], "answer": "shipped"}
        for k in range(4)
    ]
    metric = TrajectoryMetrics([ToolCallMatch(), FinalAnswerMatch(), StepCount(3)])
    trainer = Trainer(
        agent, metric, optimizer_model=model, backward_model=model, batch_size=4,
        input_keys=["input"], progress=False,
    )
    result = trainer.fit(data, val=data)
    assert result.baseline["val"] == pytest.approx(1 / 3)
    assert result.final["val"] == 1.0
    assert prompt.data == "Always call lookup_order with the order id before answering."
    backward_request = model.calls_of("backward")[0].text
    assert "<TRAJECTORY" in backward_request and "[tool_calls]" in backward_request
