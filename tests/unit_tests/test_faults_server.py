"""Fault injection over the loopback OpenAI-compatible server, through the real ``openai``
client, for every phase of a training step (forward, backward, optimizer).

For each fault: what is retried, what surfaces, and that the graph, the gradients and
the learned values stay consistent (a failed backward commits no gradient anywhere; a
failed optimizer step changes no value and no state).
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from afnio_langchain import Variable, track_usage
from afnio_langchain.autodiff import BackwardError, ChatCompletion, MinibatchError, Sum
from afnio_langchain.models import (
    InputTooLongError,
    MalformedReplyError,
    OpenAIClient,
    RetryPolicy,
    StructuredOutputError,
    required_keys_in,
)
from afnio_langchain.optim import TGD, OptimizerStepError
from afnio_langchain.testing import (
    Fault,
    OpenAICompatServer,
    default_responder,
    request_text,
)

FAST = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.2)
SHORT = RetryPolicy(max_attempts=2, initial_wait=0.01, max_wait=0.2)
CLIENT_TIMEOUT = 0.6  # well under the 1 s timeout fault, and a loaded CI runner's slow first reply
PHASES = ("forward", "backward", "optimizer")

TRANSIENT = {
    "429": Fault.rate_limit(),
    "429-retry-after": Fault.rate_limit(retry_after=0.05),
    "429-retry-after-ms": Fault.rate_limit(retry_after_ms=50),
    "500": Fault.http(500),
    "502": Fault.http(502),
    "503": Fault.http(503),
    "reset": Fault.reset(),
    "read-timeout": Fault.timeout(1.0),
    "truncated": Fault.truncated(),
    "malformed": Fault.malformed(),
    "empty-choices": Fault.empty_choices(),
}
# What surfaces once retries are spent.
SURFACES = {
    "429": openai.RateLimitError,
    "500": openai.InternalServerError,
    "503": openai.InternalServerError,
    "reset": openai.APIConnectionError,
    "read-timeout": openai.APITimeoutError,
    "truncated": openai.APIConnectionError,
    "malformed": MalformedReplyError,
    "empty-choices": MalformedReplyError,
}
PERMANENT = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    404: openai.NotFoundError,
    422: openai.UnprocessableEntityError,
}


def client(server: OpenAICompatServer, retry: RetryPolicy = FAST, **kwargs: Any) -> OpenAIClient:
    return OpenAIClient(
        openai.AsyncOpenAI(base_url=server.base_url, api_key="test-key", timeout=CLIENT_TIMEOUT),
        model="fake-model",
        retry=retry,
        **kwargs,
    )


class Step:
    """One training step's pieces: two trainable leaves, a forward call, its optimizer."""

    def __init__(self, model: OpenAIClient) -> None:
        self.model = model
        self.system = Variable("Answer briefly.", role="system prompt", requires_grad=True)
        self.question = Variable("What is 2+2?", role="question", requires_grad=True)
        self.optimizer = TGD([self.system], model=model)
        self.out: Variable | None = None

    def forward(self) -> Variable:
        self.out = ChatCompletion.apply(
            self.model,
            [
                {"role": "system", "content": [self.system]},
                {"role": "user", "content": [self.question]},
            ],
            backward_model=self.model,
        )
        return self.out

    def backward(self) -> None:
        assert self.out is not None
        self.out.backward("Too long.")

    def step(self) -> None:
        self.optimizer.step()

    def run_until(self, phase: str) -> None:
        """Run every phase before ``phase``."""
        for name in PHASES[: PHASES.index(phase)]:
            self.run(name)

    def run(self, phase: str) -> None:
        {"forward": self.forward, "backward": self.backward, "optimizer": self.step}[phase]()

    def snapshot(self) -> tuple:
        return (
            self.system.data,
            [g.data for g in self.system.grad],
            [g.data for g in self.question.grad],
            json.dumps(self.optimizer.state_dict(), sort_keys=True),
        )


def expected_after(phase: str) -> dict[str, Any]:
    """What a fault-free run leaves after ``phase`` (default responder)."""
    return {
        "forward": "echo: What is 2+2?",
        "system_grad": ["feedback for var_1"] if phase != "forward" else [],
        "question_grad": ["feedback for var_2"] if phase != "forward" else [],
        "system": "feedback for improved_value" if phase == "optimizer" else "Answer briefly.",
    }


def check_consistent(step: Step, phase: str) -> None:
    want = expected_after(phase)
    assert step.out is not None and step.out.data == want["forward"]
    assert [g.data for g in step.system.grad] == want["system_grad"]
    assert [g.data for g in step.question.grad] == want["question_grad"]
    assert step.system.data == want["system"]


# -- transient faults: retried, invisible to the result ---------------------------------------


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("fault", list(TRANSIENT.values()), ids=list(TRANSIENT))
def test_transient_fault_is_retried_and_the_step_completes_exactly(openai_server, fault, phase):
    step = Step(client(openai_server))
    step.run_until(phase)
    before = openai_server.request_count
    openai_server.inject(fault)
    with track_usage() as usage:
        step.run(phase)
    check_consistent(step, phase)
    counts = usage.total()
    assert (counts.calls, counts.retries, counts.failures) == (1, 1, 0)
    assert openai_server.request_count - before == 2
    assert openai_server.pending_faults == 0
    assert step.model.json_mode == "json_schema"  # a transient error never downgrades JSON mode


# -- persistent faults: surface after the retries, nothing half-done ----------------------------


@pytest.mark.parametrize("name", list(SURFACES))
def test_persistent_fault_in_forward_surfaces_its_error(openai_server, name):
    step = Step(client(openai_server, retry=SHORT))
    openai_server.inject(TRANSIENT[name], times=2)
    with track_usage() as usage, pytest.raises(SURFACES[name]):
        step.forward()
    assert step.out is None
    assert openai_server.request_count == SHORT.max_attempts
    counts = usage.total()
    assert (counts.calls, counts.retries, counts.failures) == (0, 1, 1)


@pytest.mark.parametrize("name", list(SURFACES))
def test_persistent_fault_in_backward_commits_nothing_and_can_be_retried(openai_server, name):
    step = Step(client(openai_server, retry=SHORT))
    step.forward()
    openai_server.inject(TRANSIENT[name], times=2)
    with pytest.raises(BackwardError) as info:
        step.backward()
    assert info.value.node == "ChatCompletionBackward0"
    assert isinstance(info.value.__cause__, SURFACES[name])
    assert step.system.grad == [] and step.question.grad == []
    step.backward()  # the graph was kept: the same pass succeeds once the server recovers
    check_consistent(step, "backward")


@pytest.mark.parametrize("name", list(SURFACES))
def test_persistent_fault_in_optimizer_changes_no_value_and_no_state(openai_server, name):
    step = Step(client(openai_server, retry=SHORT))
    step.run_until("optimizer")
    before = step.snapshot()
    openai_server.inject(TRANSIENT[name], times=2)
    with pytest.raises(OptimizerStepError, match=r"TGD step 1, parameter 0") as info:
        step.step()
    assert isinstance(info.value.__cause__, SURFACES[name])
    assert step.snapshot() == before  # value, gradients and optimizer state untouched
    step.step()
    check_consistent(step, "optimizer")


@pytest.mark.parametrize("status", list(PERMANENT))
@pytest.mark.parametrize("phase", PHASES)
def test_permanent_errors_surface_at_once(openai_server, status, phase):
    step = Step(client(openai_server))
    step.run_until(phase)
    before, snapshot = openai_server.request_count, step.snapshot()
    openai_server.inject(status, times=5)
    wrapper = {"backward": BackwardError, "optimizer": OptimizerStepError}.get(phase)
    with track_usage() as usage, pytest.raises(wrapper or PERMANENT[status]) as info:
        step.run(phase)
    if wrapper is not None:  # the node or the step and parameter named; the cause kept
        assert isinstance(info.value.__cause__, PERMANENT[status])
    # 400/422 may first be re-sent in a simpler JSON mode (backward, optimizer)
    assert openai_server.request_count - before <= 3
    assert usage.total().retries == 0
    assert step.snapshot() == snapshot


def test_failed_backward_on_one_branch_commits_nothing_anywhere():
    with OpenAICompatServer() as healthy, OpenAICompatServer() as broken:
        good, bad = client(healthy), client(broken, retry=SHORT)
        leaves, outputs = [], []
        for k, backward_model in enumerate((good, bad, good)):
            system = Variable(f"system {k}", role=f"instruction {k}", requires_grad=True)
            leaves.append(system)
            outputs.append(
                ChatCompletion.apply(
                    good,
                    [{"role": "system", "content": [system]}, {"role": "user", "content": "hi"}],
                    backward_model=backward_model,
                )
            )
        prefix = Variable("All: ", role="prefix", requires_grad=True)
        total = prefix + Sum.apply(outputs)
        broken.inject(503, times=10)
        with pytest.raises(BackwardError):
            total.backward("weak", retain_graph=True)
        assert all(leaf.grad == [] for leaf in (*leaves, prefix))

        report = total.backward("weak", best_effort=True)  # the alternative: best effort
        (failure,) = report.failures
        assert (failure.node, failure.item) == ("ChatCompletionBackward0", None)
        assert isinstance(failure.error, openai.InternalServerError)
        assert [len(leaf.grad) for leaf in leaves] == [1, 0, 1]
        assert len(prefix.grad) == 1


def test_one_item_failing_on_the_server_keeps_the_other_replies(openai_server):
    def responder(body: dict[str, Any]) -> str:
        if "item 2" in request_text(body):
            raise RuntimeError("upstream model crashed")
        return default_responder(body)

    openai_server.responder = responder
    model = client(openai_server, retry=SHORT)
    with pytest.raises(MinibatchError) as info:
        ChatCompletion.apply(
            model, [{"role": "user", "content": "{q}"}], inputs={"q": [f"item {i}" for i in range(4)]}
        )
    assert info.value.failed_items == [2]
    assert isinstance(info.value.errors[2], openai.InternalServerError)
    assert "upstream model crashed" in str(info.value)
    assert info.value.results == ["echo: item 0", "echo: item 1", None, "echo: item 3"]


# -- valid HTTP, unusable content --------------------------------------------------------------


def content_faults(server: OpenAICompatServer, key: str, replies: list[str]) -> None:
    """Answer requests asking for ``key`` with ``replies`` in turn, then normally."""
    pending = list(replies)

    def responder(body: dict[str, Any]) -> str:
        keys = required_keys_in(request_text(body)) or []
        if key in keys and pending:
            return pending.pop(0)
        return default_responder(body)

    server.responder = responder


BAD_GRADIENTS = {
    "not-json": "The system prompt is fine, I think.",
    "truncated-json": '{"var_1": "Be more spec',
    "wrong-keys": '{"feedback": "x", "other": "y"}',
    "empty": "",
    "array": '["var_1", "var_2"]',
}


@pytest.mark.parametrize("reply", list(BAD_GRADIENTS.values()), ids=list(BAD_GRADIENTS))
def test_invalid_gradient_json_is_reasked_then_used(openai_server, reply):
    step = Step(client(openai_server))
    step.forward()
    content_faults(openai_server, "var_1", [reply])
    step.backward()
    check_consistent(step, "backward")
    backward_requests = [b for b in openai_server.requests if "var_1" in request_text(b)]
    assert len(backward_requests) == 2
    reask = backward_requests[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": reply}
    assert "could not be used" in reask[-1]["content"]


def test_persistently_invalid_gradient_json_fails_the_pass_cleanly(openai_server):
    step = Step(client(openai_server))
    step.forward()
    content_faults(openai_server, "var_1", ['{"var_1": "cut'] * 3)
    with pytest.raises(BackwardError) as info:
        step.backward()
    assert isinstance(info.value.__cause__, StructuredOutputError)
    assert "ChatCompletionBackward0 (item 0)" in str(info.value)
    assert step.system.grad == [] and step.question.grad == []


BAD_PROPOSALS = {
    "truncated-json": '{"improved_value": "Answer in one w',
    "fenced-truncated": '```json\n{"improved_value": "Answer',
    "empty": "",
    "empty-value": '{"improved_value": ""}',
    "unchanged": '{"improved_value": "Answer briefly."}',
    "new-template-field": '{"improved_value": "Answer {question} briefly."}',
}


@pytest.mark.parametrize("reply", list(BAD_PROPOSALS.values()), ids=list(BAD_PROPOSALS))
def test_invalid_proposal_is_refused_and_never_becomes_the_prompt(openai_server, reply):
    step = Step(client(openai_server))
    step.run_until("optimizer")
    content_faults(openai_server, "improved_value", [reply])
    step.step()
    check_consistent(step, "optimizer")  # the next, valid proposal was used
    assert step.optimizer.last_step[0].proposals in (1, 2)


def test_persistently_invalid_proposals_leave_the_value_and_say_why(openai_server):
    step = Step(client(openai_server))
    step.run_until("optimizer")
    content_faults(openai_server, "improved_value", ['{"improved_value": "Answer in'] * 20)
    step.step()
    (result,) = step.optimizer.last_step
    assert result.status == "rejected"
    assert "no usable proposal" in result.reason and "broken JSON" in result.reason
    assert step.system.data == "Answer briefly."
    assert [g.data for g in step.system.grad] == ["feedback for var_1"]  # kept for a retry


def test_empty_forward_reply_is_a_valid_empty_answer(openai_server):
    step = Step(client(openai_server))
    openai_server.inject(Fault.empty_content())
    assert step.forward().data == ""
    assert openai_server.request_count == 1


# -- very long replies and inputs --------------------------------------------------------------


def test_very_long_replies_are_kept_whole_and_long_feedback_is_condensed(openai_server):
    step = Step(client(openai_server))
    openai_server.inject(Fault.long(size=60_000))
    assert len(step.forward().data) == 60_000
    content_faults(
        openai_server, "var_1", [json.dumps({"var_1": "x " * 20_000, "var_2": "short"})]
    )
    step.backward()
    assert step.system.grad[0].data == "x " * 20_000  # whole, byte for byte
    openai_server.reset()
    step.step()
    (result,) = step.optimizer.last_step
    assert result.status == "updated" and result.condensed
    optimizer_requests = [b for b in openai_server.requests if "improved_value" in request_text(b)]
    assert len(optimizer_requests) == 1
    assert len(openai_server.requests) == 2  # one condensing call, one proposal


def test_too_long_input_is_refused_before_sending(openai_server):
    model = client(openai_server, max_input_chars=1_000)
    with pytest.raises(InputTooLongError, match=r"exceeds max_input_chars=1000") as info:
        ChatCompletion.apply(model, [{"role": "user", "content": "word " * 500}])
    assert info.value.chars == 2_500 and info.value.limit == 1_000
    assert "message 0 (user, 2500 characters)" in str(info.value)
    assert openai_server.request_count == 0


def test_long_minibatch_item_fails_alone(openai_server):
    model = client(openai_server, max_input_chars=1_000)
    with pytest.raises(MinibatchError) as info:
        ChatCompletion.apply(
            model, [{"role": "user", "content": "{q}"}], inputs={"q": ["short", "x" * 5_000]}
        )
    assert info.value.failed_items == [1]
    assert isinstance(info.value.errors[1], InputTooLongError)
    assert info.value.results[0] == "echo: short"
    assert openai_server.request_count == 1


def test_long_feedback_makes_the_optimizer_refuse_before_sending(openai_server):
    step = Step(client(openai_server, max_input_chars=5_000))
    step.forward()
    content_faults(openai_server, "var_1", [json.dumps({"var_1": "y" * 10_000, "var_2": "ok"})])
    step.backward()
    before, requests = step.snapshot(), openai_server.request_count
    with pytest.raises(OptimizerStepError, match="optimizer call") as info:
        step.step()
    assert isinstance(info.value.__cause__, InputTooLongError)
    assert step.snapshot() == before
    assert openai_server.request_count == requests


def test_max_input_chars_is_validated(openai_server):
    with pytest.raises(ValueError, match="positive int or None"):
        client(openai_server, max_input_chars=0)
