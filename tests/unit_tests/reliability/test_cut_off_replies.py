"""Cut-off replies: a reply ended by ``max_tokens``, a stream that ended before its
finish, or a body with undecodable bytes is never a gradient or a prompt. A forward
output cut by ``max_tokens`` is kept (it is the user's business) and marked."""

from __future__ import annotations

import json

import pytest

from afnio_langchain import Variable, track_usage
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.optim import TGD

from ._stdlib_server import Reply, chat, completion, sse
from .conftest import PROPOSAL, make_client
from .test_structured_replies import forward_and_backward, structured_requests


def stepped(model) -> tuple[Variable, TGD]:
    system = Variable("Answer briefly.", role="system prompt", requires_grad=True)
    system.grad = [Variable("Too short.", role="feedback to system prompt")]
    optimizer = TGD([system], model=model)
    optimizer.step()
    return system, optimizer


def test_a_proposal_cut_by_max_tokens_never_becomes_the_prompt(client, oracle, server):
    cut = json.dumps({"improved_value": "Answer the question in one short sent"})
    oracle.queue("optimizer", chat(cut, finish_reason="length"))
    system, optimizer = stepped(client)
    assert system.data == PROPOSAL
    assert len(structured_requests(server, "optimizer")) == 2


def test_a_gradient_cut_by_max_tokens_is_reasked(client, oracle, server):
    cut = json.dumps({"var_1": "The prompt should"})
    oracle.queue("backward", chat(cut, finish_reason="length"))
    system = forward_and_backward(client)
    assert [g.data for g in system.grad] == ["Feedback var_1: be more specific."]


def test_a_stream_that_ended_before_its_finish_never_becomes_the_prompt(oracle, server):
    client = make_client("chatopenai", server, streaming=True)
    # the first two of five chunks already read as a JSON object: still not a reply
    pieces = ['{"improved_value": ', '"Answer the question."}', " I kept", " the tone", "."]
    oracle.queue("optimizer", sse(pieces[:2], finish=False, done=False))
    system, _ = stepped(client)
    assert system.data == PROPOSAL


def test_a_stream_cut_by_max_tokens_never_becomes_the_prompt(oracle, server):
    client = make_client("chatopenai", server, streaming=True)
    oracle.queue("optimizer", sse(['{"improved_value": "Answer the ques'], finish_reason="length"))
    system, _ = stepped(client)
    assert system.data == PROPOSAL


def test_undecodable_bytes_never_become_a_gradient(client, oracle, server):
    body = json.dumps(completion(json.dumps({"var_1": "Be clearer."}))).encode()
    oracle.queue("backward", Reply(body=body.replace(b"clearer", b"cl\xff\xfeearer")))
    system = forward_and_backward(client)
    assert [g.data for g in system.grad] == ["Feedback var_1: be more specific."]
    assert not any("\ufffd" in str(g.data) for g in system.grad)


def test_a_replacement_character_in_a_proposal_is_refused(client, oracle, server):
    oracle.queue("optimizer", json.dumps({"improved_value": "Answer \ufffd\ufffd briefly."}))
    system, _ = stepped(client)
    assert system.data == PROPOSAL


def test_a_forward_output_cut_by_max_tokens_is_kept_and_marked(client, oracle, server):
    from afnio_langchain.autodiff import cut_off_items

    oracle.queue("forward", chat("The answer is four, because two", finish_reason="length"))
    system = Variable("Answer briefly.", role="system prompt", requires_grad=True)
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": "{q}"}]
    with track_usage() as usage:
        out = ChatCompletion.apply(client, messages, inputs={"q": ["2+2?", "3+3?"]}, max_tokens=8)
    # the two items' requests race; whichever got the cut reply is the one marked
    assert sorted(out.data) == ["The answer is four, because two", "The answer."]
    cut = [i for i, text in enumerate(out.data) if text == "The answer is four, because two"]
    assert cut_off_items(out) == cut
    assert usage.by_purpose()["forward"].cut_off == 1


@pytest.mark.parametrize("streaming", [False, True])
def test_a_forward_stream_that_ended_early_is_an_error_not_an_answer(oracle, server, streaming):
    client = make_client("chatopenai", server, streaming=streaming)
    oracle.queue("forward", *[sse(["The ans"], finish=False, done=False)] * 5)
    system = Variable("Answer briefly.", role="system prompt")
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": "hi"}]
    # streamed: the stream ends before its finish; not streamed: the body is no JSON
    expected = "ended before its finish" if streaming else "not JSON"
    with pytest.raises(Exception, match=expected) as caught:
        ChatCompletion.apply(client, messages)
    assert "test-model" in str(caught.value)  # names the model that answered
    assert server.count() == 3  # retried, as any transient fault
