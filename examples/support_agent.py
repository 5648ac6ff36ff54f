"""Tune the system prompt of a small customer-support agent from its trajectories.

The agent has three ``@tool`` tools (look an order up, track a parcel, open a refund)
and is run over a dozen support tasks. Each run is scored on its trajectory (did it call
the right tools with the right arguments, within a step budget?) and on its final
answer; the metric's feedback flows back through the run to the system prompt, and
two TGD steps rewrite the prompt.

Offline by default, with scripted tool-calling fake models: the fake agent follows
whatever tool rules its system prompt states, and the fake optimizer returns prompts
written by hand in this file (``FAKE_PROMPTS``), so the offline scores show the
plumbing, not learning (the output says so)::

    python examples/support_agent.py

Against any OpenAI-compatible endpoint (agent, feedback and optimizer on one model)::

    AFNIO_OPENAI_BASE_URL=https://api.openai.com/v1 AFNIO_MODEL=gpt-4o-mini \\
        OPENAI_API_KEY=... python examples/support_agent.py
"""

from __future__ import annotations

import os
import re
from typing import Any

from langchain_core.tools import tool

from afnio_langchain import Variable, get_usage, no_grad, set_backward_model
from afnio_langchain.agents import (
    AgentRunnable,
    FinalAnswerMatch,
    StepCount,
    ToolCallMatch,
    TrajectoryMetrics,
)
from afnio_langchain.optim import TGD
from afnio_langchain.optim._prompts import CONDENSED_KEY
from afnio_langchain.testing import AgentTurnRequest, ToolCallingChatModel

# -- the shop's back office ----------------------------------------------------------------
ORDERS = {
    "A100": {"status": "shipped", "tracking": "TRK-551"},
    "A101": {"status": "delivered", "tracking": "TRK-552"},
    "A102": {"status": "processing", "tracking": None},
    "A103": {"status": "shipped", "tracking": "TRK-553"},
    "A104": {"status": "delivered", "tracking": "TRK-554"},
    "A105": {"status": "shipped", "tracking": "TRK-555"},
}
PARCELS = {"TRK-551": "May 3", "TRK-553": "May 5", "TRK-555": "May 9"}


@tool
def lookup_order(order_id: str) -> str:
    """Look an order up by its id."""
    order = ORDERS.get(order_id.strip())
    if order is None:
        raise ValueError(f"unknown order id {order_id!r} (ids look like A100)")
    tracking = order["tracking"] or "none yet"
    return f"order {order_id}: status {order['status']}, tracking number {tracking}"


@tool
def track_parcel(tracking_number: str) -> str:
    """Expected delivery date of a parcel."""
    date = PARCELS.get(tracking_number.strip())
    if date is None:
        raise ValueError(f"unknown tracking number {tracking_number!r}")
    return f"parcel {tracking_number}: expected delivery {date}"


@tool
def open_refund(order_id: str, reason: str) -> str:
    """Open a refund for a delivered order."""
    order = ORDERS.get(order_id.strip())
    if order is None or order["status"] != "delivered":
        raise ValueError(f"order {order_id!r} cannot be refunded (not delivered)")
    return f"refund R-{order_id} opened for order {order_id} ({reason})"


TOOLS = [lookup_order, track_parcel, open_refund]


def _status(order: str) -> dict[str, Any]:
    return {
        "input": f"Hi, what is the status of my order {order}?",
        "expected_tool_calls": [{"name": "lookup_order", "args": {"order_id": order}}],
        "answer": ORDERS[order]["status"],
    }


def _arrival(order: str) -> dict[str, Any]:
    tracking = ORDERS[order]["tracking"]
    return {
        "input": f"When will order {order} arrive?",
        "expected_tool_calls": [
            {"name": "lookup_order", "args": {"order_id": order}},
            {"name": "track_parcel", "args": {"tracking_number": tracking}},
        ],
        "answer": PARCELS[tracking],
    }


def _refund(order: str, problem: str) -> dict[str, Any]:
    return {
        "input": f"Order {order} arrived {problem}. I want my money back.",
        "expected_tool_calls": [
            {"name": "lookup_order", "args": {"order_id": order}},
            {"name": "open_refund", "args": {"order_id": order}},
        ],
        "answer": f"R-{order}",
    }


TASKS = [
    _status("A100"),
    _status("A101"),
    _status("A102"),
    _status("A104"),
    _arrival("A100"),
    _arrival("A103"),
    _arrival("A105"),
    _arrival("A103") | {"input": "Where is my parcel for order A103? When does it come?"},
    _refund("A101", "broken"),
    _refund("A104", "in the wrong size"),
    _refund("A101", "late and damaged"),
    _refund("A104", "with a missing part"),
]

INITIAL_PROMPT = "You are a friendly customer-support assistant for an online shop."

METRIC = TrajectoryMetrics([ToolCallMatch(), FinalAnswerMatch(), StepCount(4)])


# -- offline: scripted models ---------------------------------------------------------------
FAKE_PROMPTS = [
    INITIAL_PROMPT
    + " Before answering any question about an order, call lookup_order with the"
    " order id exactly as the customer wrote it (for example A100), and answer from"
    " what it returns.",
    INITIAL_PROMPT
    + " Before answering any question about an order, call lookup_order with the"
    " order id exactly as the customer wrote it (for example A100), and answer from"
    " what it returns. When the customer asks when a parcel arrives, then call"
    " track_parcel with the tracking number from the order and give the date. When"
    " the customer wants their money back, then call open_refund with the order id and"
    " their reason, and give them the refund number. Never answer from memory.",
]


def _order_id(text: str) -> str | None:
    match = re.search(r"\bA\d{3}\b", text)
    return match.group(0) if match else None


def fake_agent(request: AgentTurnRequest) -> Any:
    """A pretend model: it uses a tool only when its system prompt tells it to."""
    prompt, task, results = request.system_prompt, request.task, request.tool_results
    seen = "\n".join(str(r.content) for r in results)
    order = _order_id(task)
    if "lookup_order" not in prompt or order is None:
        return "I'm sorry to hear that! Our team will get back to you soon."
    if not results:
        return {"name": "lookup_order", "args": {"order_id": order}}
    tracking = re.search(r"TRK-\d+", seen)
    asks_date = task.startswith("When") or "When does" in task
    wants_refund = "money back" in task
    if asks_date and "track_parcel" in prompt and tracking and "expected delivery" not in seen:
        return {"name": "track_parcel", "args": {"tracking_number": tracking.group(0)}}
    if wants_refund and "open_refund" in prompt and "refund R-" not in seen:
        reason = task.split("arrived", 1)[-1].split(".")[0].strip()
        return {"name": "open_refund", "args": {"order_id": order, "reason": reason}}
    date = re.search(r"expected delivery (\w+ \d+)", seen)
    refund = re.search(r"refund (R-\w+)", seen)
    status = re.search(r"status (\w+)", seen)
    if date:
        return f"Your order {order} should arrive on {date.group(1)}."
    if refund:
        return f"I have opened refund {refund.group(1)} for order {order}."
    return f"Your order {order} is {status.group(1) if status else 'being checked'}."


def fake_feedback(request: str) -> str:
    """A pretend backward model: reads the trajectory it is shown."""
    if "<TOOL_CALL" not in request:
        return (
            "The agent answered without calling any tool, so it made up a reply. The system "
            "prompt should require calling lookup_order with the customer's order id first."
        )
    return (
        "The agent looked the order up but stopped there: the prompt should say to call "
        "track_parcel for delivery dates and open_refund for refund requests."
    )


def fake_optimizer(request: str) -> str:
    """A pretend optimizer model: merges feedback, or proposes the next prompt version."""
    if CONDENSED_KEY in request:  # asked to merge many gradients into one
        return fake_feedback(request)
    current = request.split("<VARIABLE", 1)[1].split(">", 1)[1].split("</VARIABLE>", 1)[0]
    return FAKE_PROMPTS[0] if "lookup_order" not in current else FAKE_PROMPTS[1]


OFFLINE_NOTE = (
    "OFFLINE: scripted fake models. The agent model follows whatever tool rules its "
    "prompt states, and the optimizer is a fake that returns the two prompts written by "
    "hand in FAKE_PROMPTS: the scores below show the plumbing (trajectory feedback "
    "reaches the prompt, the agent follows the new prompt), not what TGD learns."
)


def offline_models() -> tuple[Any, Any, Any]:
    agent_model = ToolCallingChatModel(turns=fake_agent)
    helper = ToolCallingChatModel(feedback=fake_feedback, optimizer=fake_optimizer)
    return agent_model, helper, helper


def endpoint_models(base_url: str) -> tuple[Any, Any, Any]:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(
        base_url=base_url,
        model=os.environ.get("AFNIO_MODEL", "gpt-4o-mini"),
        api_key=os.environ.get("OPENAI_API_KEY", "not-needed"),
        temperature=0,
    )
    return model, model, model


# -- training -------------------------------------------------------------------------------
def score(agent: AgentRunnable) -> float:
    with no_grad():
        outputs = agent.batch([{"input": t["input"]} for t in TASKS])
    return sum(METRIC(t, out).score for t, out in zip(TASKS, outputs)) / len(TASKS)


def train_step(agent: AgentRunnable, optimizer: TGD) -> None:
    outputs = agent.batch([{"input": t["input"]} for t in TASKS])
    for task, output in zip(TASKS, outputs):
        result = METRIC(task, output)
        if result.score < 1.0:  # correct runs send no feedback (and cost no call)
            output.backward(result.feedback or "The run was not fully correct.")
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    base_url = os.environ.get("AFNIO_OPENAI_BASE_URL")
    agent_model, backward_model, optimizer_model = (
        endpoint_models(base_url) if base_url else offline_models()
    )
    set_backward_model(backward_model)
    prompt = Variable(INITIAL_PROMPT, role="system prompt of a support agent", requires_grad=True)
    agent = AgentRunnable(model=agent_model, tools=TOOLS, system_prompt=prompt, max_steps=6)
    optimizer = TGD(
        agent.parameters(),
        model=optimizer_model,
        constraints=["Keep it under 120 words.", "Name the tools the agent must use."],
    )
    if base_url:
        name = os.environ.get("AFNIO_MODEL", "gpt-4o-mini")
        print(f"Endpoint run: {name} at {base_url}")
        scored_by, written_by = f"model {name}", f"written by TGD with {name}"
    else:
        print(OFFLINE_NOTE)
        scored_by, written_by = "scripted models", "hand-written in FAKE_PROMPTS, not learned"
    print("prompt before:", prompt.data)
    print(f"score before ({scored_by}): {score(agent):.3f}")
    for step in range(1, 3):
        train_step(agent, optimizer)
        print(f"score after step {step} ({scored_by}): {score(agent):.3f}")
    print(f"prompt after ({written_by}):", prompt.data)
    totals = get_usage().by_purpose()
    print(
        "model calls:",
        ", ".join(f"{purpose}={counts.calls}" for purpose, counts in sorted(totals.items())),
    )


if __name__ == "__main__":
    main()
